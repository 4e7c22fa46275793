"""References read by lead name, and references with fewer than 12 leads: the model's leads are
found by name in any order (MIT-BIH's MLII is II, PTB's Frank leads are left out); a reference in
mV with only some leads has the others estimated (the limb leads exactly from I and II, the chest
leads as well as the fit says); one without amplitudes, or naming no lead, is refused with the
reason; the shipped completion is what its command makes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import wfdb

from models.conditions import CardiacState
from models.data.preprocess import band
from models.data.ptbxl import LEADS
from models.leads import (
    DEFAULT_PATH,
    FS,
    LeadCompletion,
    LeadError,
    fit,
    lead_columns,
    mv_records,
)
from stream.events import EventError
from twin_engine.config import Settings
from twin_engine.registry import Patient
from twin_engine.worker.references import MV_MEASURED, References


def test_leads_are_found_by_name():
    assert lead_columns(["MLII", "V1"]) == {1: 0, 6: 1}
    assert lead_columns(["V5", "MLII"]) == {10: 0, 1: 1}  # MIT-BIH 114: the other way round
    ptb = ["i", "ii", "iii", "avr", "avl", "avf", "v1", "v2", "v3", "v4", "v5", "v6", "vx", "vy", "vz"]
    assert lead_columns(ptb) == {i: i for i in range(12)}
    assert lead_columns(["ECG1", "ECG2"]) == {}
    with pytest.raises(LeadError, match="II is named twice"):
        lead_columns(["II", "MLII"])


@pytest.fixture(scope="module")
def completion():
    return LeadCompletion.load()


@pytest.fixture(scope="module")
def cpsc(data_dir):
    return mv_records([data_dir / "cpsc2018" / "A0003.hea"])[0]  # 12 leads, mV, at FS, band-passed


def test_the_limb_leads_follow_from_i_and_ii(completion, cpsc):
    got = completion.complete(cpsc[:, :2], FS, [0, 1])
    real = band(cpsc, FS)
    for j in range(2, 6):  # III, aVR, aVL, aVF are sums of I and II (Einthoven, Goldberger)
        assert np.corrcoef(got[:, j], real[:, j])[0, 1] > 0.98, LEADS[j]
    assert np.allclose(got[:, :2], real[:, :2])  # the present leads as given


def test_the_chest_leads_are_estimated_from_ii_and_v1(completion, cpsc):
    got = completion.complete(cpsc[:, [1, 6]], FS, [1, 6])
    real = band(cpsc, FS)
    r = [np.corrcoef(got[:, j], real[:, j])[0, 1] for j in range(12)]
    # cross-validated medians over 270 records: V2 0.82, V6 0.91 (models/default/leads.json)
    assert r[7] > 0.6 and r[11] > 0.6, np.round(r, 2)
    assert np.std(got[:, 9]) > 0.2 * np.std(real[:, 9])  # V4 estimated, not left flat


def test_the_shipped_completion_is_what_its_command_makes(data_dir):
    shipped = json.loads(DEFAULT_PATH.read_text())
    m = fit(data_dir)
    assert np.allclose(m.cov, np.array(shipped["cov"]), rtol=1e-5, atol=1e-9)
    assert m.report == shipped["report"]
    rep = m.report
    assert rep["records"] == 270 and rep["folds"] == 5
    assert 0.5 < rep["subsets"]["II,V1"]["missing_r_median"] < 1  # what it is worth, measured


@pytest.fixture(scope="module")
def refs(tiny_model, data_dir):
    return References(Settings(data_dir=data_dir), tiny_model)


def test_a_two_lead_record_in_mv_is_a_reference(refs, data_dir):
    """A minute of MIT-BIH 100 (MLII + V5; the whole record is past max_reference_seconds)."""
    r = refs.read({"wfdb": "mitdb/100", "start": 60, "seconds": 60}, CardiacState())
    assert np.isfinite(r.base).all() and r.mv_source == MV_MEASURED
    assert r.estimated == tuple(n for n in LEADS if n not in ("II", "V5"))
    sig, f = wfdb.rdsamp(str(data_dir / "mitdb" / "100"), sampfrom=360 * 60, sampto=360 * 120)
    assert np.allclose(r.mv_scale[[1, 10]], band(sig, f["fs"]).std(0), rtol=0.02)  # II and V5 measured
    assert ((r.mv_scale > 0.005) & (r.mv_scale < 5)).all()
    assert r.qrs_mv is None or np.isnan(r.qrs_mv[[0, 2, 6]]).all()  # an estimate's QRS is not matched
    with pytest.raises(EventError, match="at most 600 s .* start, seconds"):
        refs.read({"wfdb": "mitdb/100"}, CardiacState())
    with pytest.raises(EventError, match="past its end"):
        refs.read({"wfdb": "mitdb/100", "start": 4000}, CardiacState())
    for bad in ({"seconds": -1}, {"start": "x"}, {"seconds": 1}, {"start": float("nan")}, {"seconds": True}):
        with pytest.raises(EventError, match="reference (start|seconds)"):
            refs.read({"wfdb": "mitdb/100", **bad}, CardiacState())


def test_inline_samples_name_their_leads(refs, data_dir):
    sig, f = wfdb.rdsamp(str(data_dir / "cpsc2021" / "data_101_6"), sampto=2000)
    r = refs.read({"samples": sig.tolist(), "fs": f["fs"], "leads": ["I", "II"]}, CardiacState())
    assert r.estimated == LEADS[2:] and np.isfinite(r.base).all()
    with pytest.raises(EventError, match="must be in mV or uV"):
        refs.read({"samples": sig.tolist(), "fs": f["fs"], "leads": ["I", "II"], "units": "zscore"}, CardiacState())
    with pytest.raises(EventError, match="names none of the model's leads"):
        refs.read({"samples": sig.tolist(), "fs": f["fs"], "leads": ["x", "y"]}, CardiacState())
    with pytest.raises(EventError, match="2 columns, leads names 3"):
        refs.read({"samples": sig.tolist(), "fs": f["fs"], "leads": ["I", "II", "V1"]}, CardiacState())
    with pytest.raises(EventError, match="too short"):
        refs.read({"samples": sig[:100].tolist(), "fs": f["fs"], "leads": ["I", "II"]}, CardiacState())
    with pytest.raises(EventError, match="too short"):
        refs.read({"samples": [[0.1, 0.2]], "fs": f["fs"], "leads": ["I", "II"]}, CardiacState())
    with pytest.raises(EventError, match=r"name their columns in leads"):
        refs.read({"samples": sig.tolist(), "fs": f["fs"]}, CardiacState())


def test_a_record_is_read_in_the_models_lead_order(tiny_model, data_dir, tmp_path):
    """The same 12 leads written in another order (and with PTB's Frank leads added) give the
    same base vector and scales: leads are read by name, not by column."""
    rec = wfdb.rdrecord(str(data_dir / "ludb" / "data" / "1"))
    order = [6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 5]
    x = np.concatenate([rec.p_signal[:, order], rec.p_signal[:, :3]], 1)
    names = [rec.sig_name[j].upper() for j in order] + ["vx", "vy", "vz"]
    (tmp_path / "mine").mkdir()
    wfdb.wrsamp("shuffled", fs=rec.fs, units=["mV"] * 15, sig_name=names, p_signal=x, fmt=["16"] * 15,
                write_dir=str(tmp_path / "mine"))
    shutil.copytree(data_dir / "ludb", tmp_path / "ludb")
    refs = References(Settings(data_dir=tmp_path), tiny_model)
    a = refs.read({"wfdb": "ludb/data/1"}, CardiacState())
    b = refs.read({"wfdb": "mine/shuffled"}, CardiacState())
    assert b.estimated == () and np.allclose(a.base, b.base, atol=1e-3) and np.allclose(a.mv_scale, b.mv_scale, rtol=1e-3)


def test_the_patient_record_keeps_its_estimated_leads():
    p = Patient("p", [0.1, 0.2], "m", {"statements": {"NORM": 1.0}, "heart_rate": 70})
    p.estimated_leads = ["I", "III"]
    assert Patient.from_json(p.to_json()).estimated_leads == ["I", "III"]
    assert p.view(None)["estimated_leads"] == ["I", "III"]
    bad = json.loads(p.to_json())
    bad["estimated_leads"] = "I"
    with pytest.raises(ValueError, match="estimated_leads"):
        Patient.from_json(json.dumps(bad).encode())


def test_beat_retrieval_finds_a_patients_own_beat_in_the_given_leads(data_dir):
    """The reduced-lead evaluation's beat measure: real median beats retrieve themselves, in any
    lead set; beats of other patients, shuffled, do not; a patient without beats is left out."""
    from models.data.ptbxl import PTBXL
    from models.evaluation.reduced_leads import beat_retrieval, median_beats

    db = PTBXL(data_dir / "ptbxl-subset")
    sig = np.stack([db.record(i).signal[:2496] for i in db.ecg_ids[:12]])
    sig[3] = 0.0  # a flat record: no beats
    beats = median_beats(sig, FS)
    assert np.isnan(beats[3]).all() and not np.isnan(beats[0]).any()
    own = beat_retrieval(beats, beats, [1, 6])
    assert own["top1"] == 1.0 and own["beat_correlation_median"] > 0.99 and own["patients_without_beats"] == 1
    other = beat_retrieval(np.roll(beats, 1, axis=0), beats, [1, 6])
    assert other["top1"] < 0.5 and other["beat_correlation_median"] < own["beat_correlation_median"]
