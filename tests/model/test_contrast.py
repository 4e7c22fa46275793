"""Contrastive guidance: a state is drawn away from its normal counterpart by the weight the model
stores per statement, for the teacher and the generator's batches alike."""
from dataclasses import replace

import numpy as np
import pytest

from models.conditions import CardiacState, guided_if_new, normal_counterpart
from models.twin import TwinModel
from twin_engine.worker.generator import ContinuousGenerator, GenRequest

NORMAL = CardiacState({"NORM": 1.0, "SR": 1.0}, 70)
CLBBB = CardiacState({"SR": 1.0, "CLBBB": 1.0}, 70)


@pytest.fixture()
def model(tiny_model_dir):
    m = TwinModel.load(tiny_model_dir)  # a copy of its own: the test sets the weights
    m.meta.contrast = {"CLBBB": 3.0, "LVH": 5.0}
    return m


@pytest.fixture(scope="module")
def bases(tiny_model):
    rng = np.random.default_rng(0)
    b = rng.standard_normal((2, tiny_model.ibe.cfg.base_dim)).astype(np.float32)
    return b / np.linalg.norm(b, axis=1, keepdims=True)


def test_weight_per_state_is_the_least_of_its_statements(model):
    assert model.meta.contrast_for(NORMAL) == 0.0
    assert model.meta.contrast_for(CLBBB) == 3.0
    assert model.meta.contrast_for(CardiacState({"SR": 1.0, "CLBBB": 0.5}, 70)) == 3.0
    # shared: the least weight over the summed intensity
    assert model.meta.contrast_for(CardiacState({"SR": 1.0, "CLBBB": 1.0, "LVH": 1.0}, 70)) == 1.5
    assert model.meta.contrast_for(CardiacState({"SR": 1.0, "LVH": 1.0, "CLBBB": 0.0}, 70)) == 5.0
    assert normal_counterpart(CardiacState({"AFIB": 1.0, "LVH": 1.0}, 110, 60.0, 1)) == \
        CardiacState({"NORM": 1.0, "SR": 1.0}, 110, 60.0, 1)


def test_contrast_moves_only_states_that_differ_from_normal(model, bases):
    states = [NORMAL, CLBBB]
    plain = model.generate(bases, states, steps=4, seed=[5, 5], contrast=0.0)
    own = model.generate(bases, states, steps=4, seed=[5, 5], contrast=None)  # the model's weights: 0 and 3
    np.testing.assert_array_equal(model.generate(bases, states, steps=4, seed=[5, 5]), plain)  # off by default
    strong = model.generate(bases, states, steps=4, seed=[5, 5], contrast=6.0)
    np.testing.assert_allclose(own[0], plain[0], atol=2e-5)  # normal: its counterpart is itself
    np.testing.assert_allclose(strong[0], plain[0], atol=2e-5)
    d_own, d_strong = (np.abs(x[1] - plain[1]).mean() for x in (own, strong))
    assert d_own > 5e-5 and d_strong > 1.5 * d_own  # further with a larger weight (a tiny model barely listens)


def test_stored_weights_round_trip(model, tmp_path):
    model.save(tmp_path)
    assert TwinModel.load(tmp_path).meta.contrast == {"CLBBB": 3.0, "LVH": 5.0}


def test_generator_batches_guided_rows_apart_with_the_same_result(model, bases):
    gen = ContinuousGenerator(model, steps=2, sampler="ddim", contrast=True)
    n = gen.new_per_window
    reqs = [GenRequest(bases[0], NORMAL, None, n, 11), GenRequest(bases[1], CLBBB, None, n, 12)]
    both = gen.generate(reqs)
    alone = [gen.generate([r])[0] for r in reqs]
    for a, b in zip(both, alone, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5)
    unguided = ContinuousGenerator(model, steps=2, sampler="ddim").generate(reqs)  # the default: off
    np.testing.assert_allclose(unguided[0], both[0], atol=2e-5)
    assert np.abs(unguided[1] - both[1]).mean() > 5e-5


def test_a_state_that_says_overrides_the_generator_setting(model, bases):
    """``CardiacState.contrast`` decides for its own rows: one patient asked for pronounced CLBBB
    among others drawn as the service is set, and the other way round."""
    from dataclasses import replace

    n = ContinuousGenerator(model, steps=2, sampler="ddim").new_per_window
    on, off = (ContinuousGenerator(model, steps=2, sampler="ddim", contrast=c) for c in (True, False))
    guided, plain = (g.generate([GenRequest(bases[1], CLBBB, None, n, 12)])[0] for g in (on, off))
    assert np.abs(guided - plain).mean() > 5e-5
    asks, declines = replace(CLBBB, contrast=True), replace(CLBBB, contrast=False)
    both = off.generate([GenRequest(bases[0], CLBBB, None, n, 11), GenRequest(bases[1], asks, None, n, 12)])
    np.testing.assert_allclose(both[1], guided, atol=2e-5)
    np.testing.assert_allclose(both[0], off.generate([GenRequest(bases[0], CLBBB, None, n, 11)])[0], atol=2e-5)
    np.testing.assert_allclose(on.generate([GenRequest(bases[1], declines, None, n, 12)])[0], plain, atol=2e-5)
    assert not on.guided(replace(NORMAL, contrast=True))  # nothing to push a normal ECG away from


def test_a_state_adding_morphology_the_patient_was_not_registered_with_asks_for_contrast():
    weighted = {"CLBBB": 2.0, "LVH": 2.0}
    normal = {"NORM": 1.0, "SR": 1.0}
    assert guided_if_new(CLBBB, normal, weighted).contrast is True
    assert guided_if_new(replace(CLBBB, heart_rate=90), CLBBB.statements, weighted).contrast is None  # its own
    assert guided_if_new(replace(CLBBB, contrast=False), normal, weighted).contrast is False  # it says
    assert guided_if_new(CardiacState({"AFIB": 1.0}, 110), normal, weighted).contrast is None  # no weight
    assert guided_if_new(CLBBB, None, weighted).contrast is None  # a record from before: not known
    both = CardiacState({"SR": 1.0, "LVH": 1.0, "CLBBB": 1.0}, 70)
    assert guided_if_new(both, {"SR": 1.0, "LVH": 1.0}, weighted).contrast is True
    # 1AVB is drawn well unguided, and guided its P waves are counted as beats
    assert guided_if_new(CardiacState({"SR": 1.0, "1AVB": 1.0}, 70), normal, {**weighted, "1AVB": 2.0}).contrast is None


def test_render_draws_with_contrast_only_when_the_setting_asks(tmp_path, data_dir):
    """``contrast_guidance`` reaches offline records as it reaches the service: a CLBBB patient's
    record changes, a normal patient's does not; a normal patient changed to CLBBB is guided from
    then on (``contrast_new_morphology``), and the manifest says so."""
    import json

    import wfdb

    from tests.support import RECORDS
    from twin_engine.config import REPO_ROOT, Settings
    from twin_engine.ops.render import render_scenario
    from twin_engine.ops.scenario import load_scenario

    shipped = TwinModel.load(REPO_ROOT / "models" / "default")
    assert shipped.meta.contrast.get("CLBBB", 0) > 0
    p = tmp_path / "s.toml"
    p.write_text(f'''
seconds = 10

[[patient]]
id = "normal"
wfdb = "{RECORDS[0]}"
state = {{ statements = {{ NORM = 1, SR = 1 }}, heart_rate = 70 }}

[[patient]]
id = "lbbb"
wfdb = "{RECORDS[0]}"
state = {{ statements = {{ CLBBB = 1, SR = 1 }}, heart_rate = 70 }}

[[patient]]
id = "becomes"
wfdb = "{RECORDS[0]}"
state = {{ statements = {{ NORM = 1, SR = 1 }}, heart_rate = 70 }}

[[change]]
at = 4
patient = "becomes"
state = {{ statements = {{ CLBBB = 1, SR = 1 }}, heart_rate = 70 }}
''')
    out, changes = {}, {}
    for name, settings in (("off", {"contrast_guidance": False}), ("on", {"contrast_guidance": True}),
                           ("never", {"contrast_new_morphology": False})):
        render_scenario(Settings(data_dir=data_dir, **settings), shipped, load_scenario(p), tmp_path / name)
        out[name] = {pid: wfdb.rdrecord(str(tmp_path / name / pid)).p_signal for pid in ("normal", "lbbb", "becomes")}
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        changes[name] = {r["record"]: r["changes"] for r in manifest["records"]}
    np.testing.assert_array_equal(out["off"]["normal"], out["on"]["normal"])
    assert np.abs(out["off"]["lbbb"] - out["on"]["lbbb"]).mean() > 0.01  # mV
    assert "contrast" not in changes["off"]["lbbb"][0] and changes["on"]["lbbb"][0]["contrast"] is True
    # registered normal, then CLBBB: guided from 4 s unless the setting is off; the same before
    assert changes["off"]["becomes"][1]["contrast"] is True and "contrast" not in changes["never"]["becomes"][1]
    fs = 250
    np.testing.assert_array_equal(out["off"]["becomes"][:3 * fs], out["never"]["becomes"][:3 * fs])
    assert np.abs(out["off"]["becomes"][5 * fs:] - out["never"]["becomes"][5 * fs:]).mean() > 0.01
