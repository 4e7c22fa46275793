import json
import shutil

import numpy as np
import pytest
import torch

from models.checkpoint import CheckpointError
from models.conditions import CardiacState, ConditionError
from models.nets.dit import AdaXDiT, DiTConfig
from models.sampling.samplers import SAMPLERS, NoiseSchedule, get_sampler
from models.twin import TwinModel

NORMAL = CardiacState({"NORM": 1.0, "SR": 1.0}, 70)
AFIB = CardiacState({"AFIB": 1.0}, 110)


@pytest.fixture(scope="module")
def base(tiny_model, data_dir):
    from models.data.ptbxl import PTBXL

    db = PTBXL(data_dir / "ptbxl-subset")
    return tiny_model.encode([db.record(db.ecg_ids[0]).signal])


def test_shapes_and_base_vector(tiny_model, base):
    assert base.shape == (tiny_model.ibe.cfg.base_dim,)
    assert abs(np.linalg.norm(base) - 1) < 1e-5
    x = torch.randn(2, 12, tiny_model.meta.window)
    z = tiny_model.ae.encode(x)
    assert z.shape == (2, 4, tiny_model.meta.window // 8)
    assert tiny_model.ae.decode(z).shape == x.shape


def test_several_references_combine(tiny_model, data_dir):
    from models.data.ptbxl import PTBXL

    db = PTBXL(data_dir / "ptbxl-subset")
    a, b = (db.record(i).signal for i in db.ecg_ids[:2])
    both = tiny_model.encode([a, b])
    assert abs(np.linalg.norm(both) - 1) < 1e-5
    assert not np.allclose(both, tiny_model.encode([a]))
    with pytest.raises(ValueError, match="expected"):
        tiny_model.encode([a[:, :6]])


def test_condition_changes_output_and_seed_reproduces(tiny_model, base):
    bb = np.stack([base, base])
    x1 = tiny_model.generate(bb, [NORMAL, AFIB], steps=4, seed=[7, 7])
    x2 = tiny_model.generate(bb, [NORMAL, AFIB], steps=4, seed=[7, 7])
    assert x1.shape == (2, tiny_model.meta.window, 12)
    np.testing.assert_array_equal(x1, x2)
    assert np.abs(x1[0] - x1[1]).mean() > 1e-4  # same noise, other state
    x3 = tiny_model.generate(bb[:1], [NORMAL], steps=4, seed=8)
    assert np.abs(x3[0] - x1[0]).mean() > 1e-4  # other noise


def test_base_vector_changes_output(tiny_model, base):
    other = -base
    x = tiny_model.generate(np.stack([base, other]), [NORMAL, NORMAL], steps=2, seed=[3, 3])
    assert np.abs(x[0] - x[1]).mean() > 1e-5


def test_unknown_condition_refused(tiny_model, base):
    with pytest.raises(ConditionError, match="XYZ"):
        tiny_model.generate(base[None], [CardiacState({"XYZ": 1.0})])
    with pytest.raises(ConditionError, match="heart_rate"):
        tiny_model.generate(base[None], [CardiacState({}, 400)])


@pytest.mark.parametrize("adaln,cross", [(True, False), (False, True), (True, True)])
def test_ablation_variants(adaln, cross):
    cfg = DiTConfig(dim=32, depth=1, heads=2, base_dim=16, tokens=16, use_adaln=adaln, use_cross=cross)
    dit = AdaXDiT(cfg)
    torch.nn.init.normal_(dit.out.weight)  # see through the zero init
    cond = dit.condition_tokens(torch.rand(3, 20), torch.randn(3, 4))
    v = dit(torch.randn(3, 4, 16), torch.tensor([1, 500, 999]), torch.randn(3, 16), cond)
    assert v.shape == (3, 4, 16)
    cond2 = dit.condition_tokens(torch.rand(3, 20), torch.randn(3, 4))
    v2 = dit(torch.randn(3, 4, 16), torch.tensor([1, 500, 999]), torch.randn(3, 16), cond2)
    assert not torch.allclose(v, v2)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_samplers_reach_a_known_target(name):
    target = torch.linspace(-1, 1, 32).view(1, 1, 32).repeat(2, 4, 1)
    sampler = get_sampler(name, NoiseSchedule())
    for steps in (1, 2, 4, 16):
        out = sampler.sample(lambda x, t: target, torch.randn(2, 4, 32), steps, torch.Generator().manual_seed(0))
        assert torch.allclose(out, target, atol=1e-4), (name, steps)


def test_inpainting_keeps_context(tiny_model, base):
    ctx = torch.randn(1, 4, tiny_model.tokens // 4)
    z = tiny_model.generate_latent(base[None], [NORMAL], steps=3, seed=1, context=ctx)
    torch.testing.assert_close(z[..., : ctx.shape[-1]], ctx)


def test_checkpoint_round_trip(tiny_model, tiny_model_dir, tmp_path, base):
    tiny_model.save(tmp_path / "m")
    again = TwinModel.load(tmp_path / "m")
    a = tiny_model.generate(base[None], [AFIB], steps=2, seed=5)
    b = again.generate(base[None], [AFIB], steps=2, seed=5)
    np.testing.assert_array_equal(a, b)


def test_corrupt_checkpoint_refused(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    w = bad / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        TwinModel.load(bad)


def test_mismatched_checkpoint_refused(tiny_model_dir, tmp_path):
    bad = tmp_path / "mismatch"
    shutil.copytree(tiny_model_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["dit"]["depth"] = 2
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not match its architecture"):
        TwinModel.load(bad)


def test_edit_changes_less_than_a_fresh_sample(tiny_model, base):
    target = CardiacState({"NORM": 1.0, "SR": 1.0, "PVC": 1.0}, 70)
    src, edited = tiny_model.edit(base, NORMAL, target, steps=4, seed=11)
    fresh = tiny_model.generate(base[None], [target], steps=4, seed=12, sampler="ddim")[0]
    d_edit = np.abs(edited - src).mean()
    assert d_edit < np.abs(fresh - src).mean()


def test_training_resumes(tmp_path, data_dir):
    from models.training.stages import run_stage

    out = tmp_path / "r"
    run_stage("autoencoder", out, data_dir / "ptbxl-subset", size="tiny", steps=6, batch=4, limit=8)
    state = torch.load(out / "autoencoder.state.pt", weights_only=True)
    assert state["step"] == 6
    run_stage("autoencoder", out, data_dir / "ptbxl-subset", size="tiny", steps=10, batch=4, limit=8)
    info = json.loads((out / "training.json").read_text())
    assert torch.load(out / "autoencoder.state.pt", weights_only=True)["step"] == 10
    assert info["autoencoder"]["steps"] == 10


def test_alpha_bar_table_lookup():
    """ab(t) is the schedule's cumulative product at t and 1 at t = -1 (clean), for ints and
    batches of timesteps alike, and stays so on repeated lookups (the table is kept per device)."""
    s = NoiseSchedule()
    expected = torch.cumprod(1 - torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2, 0)
    t = torch.tensor([999, 500, 0, -1])
    for _ in range(2):
        got = s.ab(t)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, torch.cat([expected[[999, 500, 0]], torch.ones(1, dtype=torch.float64)]).float())
    assert float(s.ab(-1)) == 1.0 and float(s.ab(999)) == pytest.approx(float(expected[999]), rel=1e-6)
