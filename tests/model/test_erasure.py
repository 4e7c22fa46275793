"""State erasure of base vectors (``twin-engine train erase``, models/training/erasure.py)."""

import json
import shutil

import numpy as np
import pytest
import torch

from models.training.erasure import CONCEPTS, concepts, leace
from models.twin import TwinModel


def test_leace_removes_a_linear_concept_and_keeps_the_rest():
    """Synthetic vectors carry a concept along one direction and an identity code along others:
    after erasure a held-out linear probe reads the concept at chance, the identity code intact."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    d, n = 32, 4000
    concept = rng.random(n) < 0.3
    ident = rng.standard_normal((n, 4))
    mix = rng.standard_normal((5, d))
    x = np.c_[concept * 1.0, ident] @ mix + 0.1 * rng.standard_normal((n, d))
    mean, a, b = leace(x[:3000], concept[:3000, None].astype(float))
    assert a.shape == (d, 1) and b.shape == (d, 1)
    erased = x - (x - mean) @ b @ a.T
    xc, zc = erased[:3000] - erased[:3000].mean(0), concept[:3000] - concept[:3000].mean()
    assert np.abs(xc.T @ zc / 3000).max() < 1e-10
    for data, below in ((x, None), (erased, 0.6)):
        probe = LogisticRegression(max_iter=2000).fit(data[:3000], concept[:3000])
        score = roc_auc_score(concept[3000:], probe.predict_proba(data[3000:])[:, 1])
        assert score > 0.99 if below is None else score < below
    # the identity code is still read (least squares) from what is left
    coef = np.linalg.lstsq(erased[:3000] - mean, ident[:3000], rcond=None)[0]
    r2 = 1 - ((erased[3000:] - mean) @ coef - ident[3000:]).var(0) / ident[3000:].var(0)
    assert r2.min() > 0.9


@pytest.fixture(scope="module")
def erased_dir(tmp_path_factory, tiny_model_dir, data_dir):
    from models.training.stages import run_stage

    out = tmp_path_factory.mktemp("erased") / "model"
    shutil.copytree(tiny_model_dir, out)
    run_stage("erase", out, data_dir / "ptbxl-subset", size="tiny", limit=48)
    return out


def test_erase_stage_installs_an_erasure_that_changes_the_encoder(erased_dir, tiny_model, data_dir):
    from models.training.trainer import load_training_set, record_latents_and_bases

    model = TwinModel.load(erased_dir)
    info = json.loads((erased_dir / "training.json").read_text())["erase"]
    assert info["concepts"] == [*CONCEPTS, "heart_rate"]
    assert model.ibe.cfg.erase_rank == info["rank"] > 0
    assert info["cross_covariance_after"] < 1e-4 * info["cross_covariance_before"]
    # a new space: stored base vectors of the old encoder are refused by the id, not misread
    assert model.encoder_id != tiny_model.encoder_id
    # the training records' vectors (as the denoiser sees them) no longer covary with the concepts
    ts = load_training_set(data_dir / "ptbxl-subset", limit=48)
    _, bases = record_latents_and_bases(model, ts, torch.device("cpu"))
    z = concepts(ts.states)
    keep = z.std(0) > 0
    zs = (z[:, keep] - z[:, keep].mean(0)) / z[:, keep].std(0)
    x = bases.numpy() - bases.numpy().mean(0)
    assert np.linalg.norm(x.T @ zs / len(x)) < 1e-4
    # the service path erases too: encode() of a record matches the training path's vector
    np.testing.assert_allclose(model.encode([ts.signals[0]]), bases[0].numpy(), atol=1e-5)
    # a second erasure on top of the first is refused
    from models.training.stages import run_stage

    with pytest.raises(ValueError, match="already has an erasure"):
        run_stage("erase", erased_dir, data_dir / "ptbxl-subset", size="tiny", limit=48)


def test_packaged_model_keeps_the_erasure_in_full_precision(erased_dir, tmp_path):
    """fp16 packaging halves parameters only: the erasure's whitening entries would lose the
    concepts' exact cancellation in fp16."""
    from safetensors.torch import load_file

    model = TwinModel.load(erased_dir)
    model.save(tmp_path / "pkg", half=True)
    stored = load_file(str(tmp_path / "pkg" / "model.safetensors"))
    assert stored["ibe.erase_b"].dtype == torch.float32 and stored["ae.latent_scale"].dtype == torch.float32
    assert stored["ibe.out.1.weight"].dtype == torch.float16
    again = TwinModel.load(tmp_path / "pkg")
    torch.testing.assert_close(again.ibe.erase_a, model.ibe.erase_a, rtol=0, atol=0)
    x = np.random.default_rng(1).standard_normal((model.meta.window * 2, 12)).astype(np.float32)
    np.testing.assert_allclose(again.encode([x]), model.encode([x]), atol=5e-3)


def test_a_bare_base_vector_is_erased_like_the_extractors_own(erased_dir, data_dir):
    """A registration's bare vector goes onto the sphere and through the same erasure, so the
    denoiser only ever sees vectors of the space it was trained in; the concepts' directions
    in it (a rhythm statement's) are gone."""
    from models.conditions import CardiacState
    from twin_engine.config import Settings
    from twin_engine.worker.references import References

    model = TwinModel.load(erased_dir)
    refs = References(Settings(data_dir=data_dir), model)
    v = np.random.default_rng(2).standard_normal(model.ibe.cfg.base_dim) * 7.0
    got = refs.read({"base_vector": v.tolist()}, CardiacState()).base
    want = model.ibe.erase(torch.from_numpy((v / np.linalg.norm(v)).astype(np.float32))).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert not np.allclose(got, v / np.linalg.norm(v), atol=1e-3)
    # erasing twice changes nothing the concepts read: the removed component is already zero
    b = model.ibe.erase_b.numpy()
    np.testing.assert_allclose((got - model.ibe.erase_mean.numpy()) @ b, 0, atol=1e-4)
