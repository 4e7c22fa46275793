"""``twin-engine bench generate`` on the tiny distilled model: every row carries figures, the
summary is the serving configuration, and a backend this machine lacks is skipped with why."""

import math

import torch

from twin_engine.bench import bench_generate, table
from twin_engine.config import load_settings


def test_bench_generate_rows_and_serving_summary(distilled_model_dir, tmp_path):
    s = load_settings(env={})
    s.model_path, s.cache_dir, s.segment_seconds = distilled_model_dir, tmp_path, 1.0
    res = bench_generate(s, ["torch", "tensorrt"], ["distilled", "dpmpp2m"], [1, 4], [2], repeats=1)
    rows = [r for r in res["rows"] if "skipped" not in r]
    # the student only at its own step count; the teacher at both
    assert sorted((r["sampler"], r["steps"]) for r in rows) == [("distilled", 4), ("dpmpp2m", 1), ("dpmpp2m", 4)]
    # positive figures only: which of two separately timed parts is larger is noise at repeats=1
    assert all(r["realtime_patients"] > 0 and r["achieved_gflop_per_s"] > 0 and r["decoder_s"] > 0
               and r["batch_s"] > 0 and r["denoiser_s"] >= 0 for r in rows)
    assert res["best"]["sampler"] == "distilled" and res["best"]["steps"] == 4
    assert res["best"]["ratio_vs_neurokit2_per_core"] > 0
    if not torch.cuda.is_available():
        [skipped] = [r for r in res["rows"] if "skipped" in r]
        assert "NVIDIA GPU" in skipped["skipped"]
        assert all(math.isnan(r["fraction_of_peak"]) for r in rows)
    assert "Serving configuration (torch distilled 4 steps)" in table(res)
