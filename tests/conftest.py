"""Fixtures every level shares: the shared data folder and the tiny models trained on it once per
session (``tests/model`` and ``tests/integration`` use them; the broker is integration's own)."""

from __future__ import annotations

from pathlib import Path

import pytest

from twin_engine.config import default_data_dir

DATA = default_data_dir()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "ptbxl-subset").is_dir():
        pytest.fail(f"shared data not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, data_dir) -> Path:
    """A tiny twin model, trained for a few hundred steps on 48 real records (seconds)."""
    from models.training.stages import run_stage

    out = tmp_path_factory.mktemp("tiny_model")
    for stage, steps in (("autoencoder", 60), ("encoder", 40), ("diffusion", 300)):
        run_stage(stage, out, data_dir / "ptbxl-subset", size="tiny", steps=steps, batch=8, limit=48)
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from models.twin import TwinModel

    return TwinModel.load(tiny_model_dir)


@pytest.fixture(scope="session")
def distilled_model_dir(tmp_path_factory, tiny_model_dir, data_dir) -> Path:
    """The tiny model plus a 4-step student fitted to 64 teacher trajectories (seconds)."""
    import shutil

    from models.training.stages import run_stage

    out = tmp_path_factory.mktemp("distilled") / "model"
    shutil.copytree(tiny_model_dir, out)
    run_stage("distill", out, data_dir / "ptbxl-subset", size="tiny", steps=200, batch=16, limit=48,
              distill_options={"trajectories": 64, "teacher_steps": 16})
    return out
