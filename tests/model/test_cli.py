"""CLI commands that run on their own (no service): packaging a training run and plotting an ECG
from a record or from a published segment."""

from __future__ import annotations

import numpy as np

from models.conditions import CardiacState
from models.twin import TwinModel
from stream.segments import Segment
from tests.support import RECORDS
from twin_engine.ops.cli import main


def test_package_makes_a_model_that_generates_like_the_run(distilled_model_dir, tmp_path):
    out = tmp_path / "packaged"
    assert main(["package", str(distilled_model_dir), "--out", str(out), "--version", "test-1"]) == 0
    run, packaged = TwinModel.load(distilled_model_dir), TwinModel.load(out)
    assert packaged.meta.version == "test-1" and packaged.student_denoiser is not None
    assert (out / "model.safetensors").stat().st_size < (distilled_model_dir / "model.safetensors").stat().st_size
    base = np.ones((2, run.ibe.cfg.base_dim), np.float32) / np.sqrt(run.ibe.cfg.base_dim)
    states = [CardiacState(), CardiacState({"AFIB": 1.0}, 120)]
    a, b = (m.generate(base, states, 4, 7, "distilled") for m in (run, packaged))
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 2e-2  # weights stored in fp16


def test_plot_a_record_and_a_published_segment(data_dir, tmp_path):
    rec_png, seg_png, seg_json = tmp_path / "rec.png", tmp_path / "seg.png", tmp_path / "seg.json"
    assert main(["plot", str(data_dir / RECORDS[0]), "--out", str(rec_png)]) == 0
    t = np.arange(500) / 250
    samples = np.repeat(np.sin(2 * np.pi * 1.2 * t)[:, None], 12, 1).astype(np.float32)
    seg = Segment("bed-1", 3, 1.7e9, 250, tuple(f"L{i}" for i in range(12)), samples, {"heart_rate": 72},
                  "e-1", "v")
    seg_json.write_bytes(seg.to_json())
    assert main(["plot", str(seg_json), "--out", str(seg_png)]) == 0
    for png in (rec_png, seg_png):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_register_names_a_local_record_as_the_service_reads_it(data_dir, tmp_path, monkeypatch):
    """The service reads ``wfdb`` references from its own data_dir; a record named from the
    caller's working directory is sent relative to that directory, so both sides mean one file."""
    from twin_engine.config import Settings
    from twin_engine.ops.clients import _record_path

    settings = Settings(data_dir=data_dir)
    monkeypatch.chdir(data_dir.parent)
    assert _record_path(settings, f"data/{RECORDS[0]}") == RECORDS[0]
    assert _record_path(settings, str(data_dir / RECORDS[0])) == RECORDS[0]
    assert _record_path(settings, RECORDS[0]) == RECORDS[0]  # no such local file: as given
    (tmp_path / "own.hea").write_text("own 1 250 10\n")
    assert _record_path(settings, str(tmp_path / "own")) == str(tmp_path / "own")  # not in data_dir: the service refuses it
