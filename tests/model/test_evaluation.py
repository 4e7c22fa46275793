"""The evaluation harness, reduced mode, on the shipped default model."""

from __future__ import annotations

import math

import pytest

from models.evaluation.classifier import load_classifier
from models.evaluation.metrics import fid, prdc, retrieval
from models.evaluation.report import EvalConfig, evaluate
from models.twin import TwinModel
from twin_engine.config import REPO_ROOT

DEFAULT = REPO_ROOT / "models" / "default"


def _finite(tree) -> list[str]:
    bad = []

    def walk(x, path):
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{path}.{k}")
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{path}[{i}]")
        elif isinstance(x, float) and not math.isfinite(x):
            bad.append(path)

    walk(tree, "")
    return bad


def test_metric_sanity():
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 4)), rng.normal(size=(200, 4))
    far = rng.normal(loc=3.0, size=(200, 4))
    assert fid(a, b) < 0.3 < fid(a, far)
    same, diff = prdc(a, b), prdc(a, far)
    assert same["precision"] > 0.7 and diff["precision"] < 0.1 and diff["coverage"] < 0.1
    assert retrieval(a, a + 0.01)["top1"] == 1.0


@pytest.mark.skipif(not (DEFAULT / "evaluator.safetensors").is_file(), reason="no shipped default model and judge")
def test_reduced_report_and_a_wrong_model_scores_worse(tmp_path, data_dir):
    model = TwinModel.load(DEFAULT)
    data = data_dir / "ptbxl-subset"
    # the shipped judge (AUROC 0.90): a reduced one trained in seconds is too weak to separate
    # the models reliably (classifier training is still run here, by the utility experiment)
    stored = load_classifier(DEFAULT)
    right, judge = evaluate(model, data, tmp_path / "right", EvalConfig.reduced_mode(), judge=stored)
    wrong, _ = evaluate(model, data, tmp_path / "wrong", EvalConfig.reduced_mode(shuffle_conditions=True), judge=judge)
    for res in (right, wrong):
        skip = {".classifier.per_label_auroc"}  # labels absent from the reduced held-out set
        bad = [p for p in _finite(res) if not any(p.startswith(s) for s in skip)]
        conditioning_nan = [p for p in bad if p.startswith(".conditioning") and "real_heldout" in p]
        assert set(bad) == set(conditioning_nan), bad
    assert (tmp_path / "right" / "EVALUATION.md").read_text().count("neurokit2") >= 3
    assert (tmp_path / "right" / "twin.png").stat().st_size > 5000

    def mean_cond(res):
        return sum(v["generated_auroc"] for v in res["conditioning"].values()) / len(res["conditioning"])

    assert mean_cond(wrong) < mean_cond(right) - 0.1
    hr_key = next(k for k in right["heart_rate"] if k.startswith("twins_"))
    assert hr_key == f"twins_{right['config']['sampler']}_4"
    assert wrong["heart_rate"][hr_key]["median_abs_error_bpm"] > right["heart_rate"][hr_key]["median_abs_error_bpm"]


def test_the_noise_stress_test_runs_on_twins_against_their_schedule(data_dir):
    """The twins' half of docs/STRESS.md: a twin drawn on a schedule, NSTDB noise at an SNR,
    scored against the schedule; clean, XQRS finds its beats, and muscle noise at -6 dB costs it."""
    from models.evaluation.stress import noise_stress, twin_sources

    model = TwinModel.load(REPO_ROOT / "models" / "default")
    sources = list(twin_sources(model, data_dir, patients=1, seconds=40.0))
    (name, x, fs, ref, normal), = sources
    assert name.startswith("ptbxl-") and len(x) == 40 * 250 and 40 <= len(ref) <= 60 and len(normal) < len(ref)
    res = noise_stress(data_dir, snrs=(-6,), kinds=("ma",), detectors=("xqrs",), seconds=40.0, sources=sources)
    cells = {(c["noise"], c["snr_db"]): c for c in res["cells"]}
    assert cells[("clean", None)]["se"] >= 0.97 and cells[("clean", None)]["ppv"] >= 0.97
    assert cells[("ma", -6)]["ppv"] < cells[("clean", None)]["ppv"]
