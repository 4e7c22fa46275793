"""Millivolts: a lead's scale is what the model's z-scores are multiplied by (z x scale gives back
the reference's band in mV), a reference in other units is refused, the rail stays the rail, the
shipped amplitude model is what its command makes, and references give measured or predicted
scales as their units allow."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.amplitude import (
    DEFAULT_PATH,
    RAIL_MV,
    AmplitudeError,
    AmplitudeModel,
    fit,
    lead_scales,
    to_mv,
)
from models.conditions import CardiacState
from models.data.ludb import LUDB
from models.data.preprocess import band, to_model_input
from stream.events import EventError
from stream.segments import Segment, decode_segment
from twin_engine.config import Settings
from twin_engine.registry import Patient
from twin_engine.worker.references import MV_MEASURED, MV_PREDICTED, References


@pytest.fixture(scope="module")
def ludb(data_dir):
    db = LUDB(data_dir / "ludb")
    return db.signal(db.record_ids[0]), db.fs


def test_z_times_the_scale_is_the_band_in_millivolts(ludb):
    x, fs = ludb
    s = lead_scales(x, fs)
    z = to_model_input(x, fs, fs)  # same rate: the band, z-scored
    mv = band(x.astype(np.float64), fs)
    assert np.allclose(to_mv(z, s), mv - mv.mean(0), atol=2e-3 * s.max())
    assert ((s > 0.02) & (s < 2)).all()


def test_a_reference_in_other_units_is_refused_with_the_lead(ludb):
    x, fs = ludb
    with pytest.raises(AmplitudeError, match="lead 1 .* mV"):
        lead_scales(x * 1000, fs)  # uV called mV
    with pytest.raises(AmplitudeError):
        lead_scales(np.zeros_like(x), fs)  # no signal at all


def test_the_rail_stays_at_the_rail():
    z = np.array([[RAIL_MV, 1.0], [-RAIL_MV, 2.0], [0.5, RAIL_MV]], np.float32)
    mv = to_mv(z, np.array([0.2, 0.5]))
    assert mv[0, 0] == np.float32(RAIL_MV) and mv[1, 0] == -np.float32(RAIL_MV) and mv[2, 1] == np.float32(RAIL_MV)
    assert np.allclose(mv[:, 1][:2], [0.5, 1.0]) and np.isclose(mv[2, 0], 0.1)


def test_the_shipped_amplitude_model_is_what_its_command_makes(data_dir):
    shipped = json.loads(DEFAULT_PATH.read_text())
    m = fit(data_dir)
    assert np.allclose(m.to_dict()["coef"], shipped["coef"], atol=1e-6)
    assert m.report == shipped["report"]
    r = m.report
    assert r["records"] == {"ludb": 150, "cpsc2018": 120}
    # what it is worth beside the pooled median is reported, not assumed
    assert 0 < r["cv_median_relative_error"]["all"] < 0.5 and 0 < r["cv_median_relative_error_pooled_median"]["all"]


def test_predicted_scales_move_with_the_state():
    m = AmplitudeModel.load()
    normal = m.predict(CardiacState())
    lbbb = m.predict(CardiacState({"CLBBB": 1.0}, 70))
    assert normal.shape == (12,) and ((normal > 0.05) & (normal < 1.0)).all()
    assert (lbbb[6:8] > normal[6:8]).all()  # LBBB's wide QRS is larger in V1-V2 (+48-61% fitted)


def test_references_give_measured_or_predicted_scales(tiny_model, data_dir, ludb):
    refs = References(Settings(data_dir=data_dir), tiny_model)
    x, fs = ludb
    own = refs.read({"wfdb": "ludb/data/1"}, CardiacState())
    assert own.mv_source == MV_MEASURED and np.allclose(own.mv_scale, lead_scales(x, fs), rtol=1e-4)
    inline = refs.read({"samples": (x[:2500] * 1000).tolist(), "fs": fs, "units": "uV"}, CardiacState())
    assert inline.mv_source == MV_MEASURED and np.allclose(inline.mv_scale, lead_scales(x[:2500], fs), rtol=1e-3)
    state = CardiacState({"CLBBB": 1.0}, 80)
    for ref in ({"wfdb": "ptbxl-subset/records250/00000/00024_250"}, {"base_vector": own.base.tolist()},
                {"samples": x[:2500].tolist(), "fs": fs, "units": "zscore"}):
        r = refs.read(ref, state)
        assert r.mv_source == MV_PREDICTED and np.allclose(r.mv_scale, refs.amplitude.predict(state))
    with pytest.raises(EventError, match="band SD .* mV"):
        refs.read({"samples": (x[:2500] * 1000).tolist(), "fs": fs}, state)  # uV sent as mV
    with pytest.raises(EventError, match="units must be one of"):
        refs.read({"samples": x[:2500].tolist(), "fs": fs, "units": "V"}, state)


def test_segments_say_their_units_and_old_ones_still_read():
    seg = Segment("p", 0, 10.0, 250, ("I", "II"), np.array([[0.5, -1.25]], np.float32), {}, None, "m")
    d = json.loads(seg.to_json())
    assert d["schema_version"] == 2 and d["units"] == "mV"
    back = decode_segment(seg.to_json())
    assert back.units == "mV" and np.allclose(back.samples, [[0.5, -1.25]])
    old = {**d, "schema_version": 1}
    old.pop("units")
    assert decode_segment(json.dumps(old)).units == "zscore"


def test_the_patient_record_keeps_its_scales():
    p = Patient("p", [0.1, 0.2], "m", {"statements": {"NORM": 1.0}, "heart_rate": 70})
    p.mv_scale, p.mv_source = [0.2] * 12, MV_PREDICTED
    q = Patient.from_json(p.to_json())
    assert q.mv_scale == [0.2] * 12 and q.mv_source == MV_PREDICTED
    assert p.view(None)["mv_source"] == MV_PREDICTED
    bad = json.loads(p.to_json())
    bad["mv_scale"] = [0.2, -1]
    with pytest.raises(ValueError, match="mv_scale"):
        Patient.from_json(json.dumps(bad).encode())
