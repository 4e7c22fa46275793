"""``twin-engine bench generate`` on the tiny distilled model: every row carries figures, the
summary is the serving configuration, and a backend this machine lacks is skipped with why."""

import math

import torch

from twin_engine.config import load_settings
from twin_engine.ops.bench import bench_generate, bench_serve, table


def test_bench_generate_rows_and_serving_summary(distilled_model_dir, tmp_path):
    s = load_settings(env={})
    s.model_path, s.cache_dir, s.segment_seconds = distilled_model_dir, tmp_path, 1.0
    res = bench_generate(s, ["torch", "onnxruntime", "tensorrt"], ["distilled", "dpmpp2m"], [1, 4], [2], repeats=1)
    rows = [r for r in res["rows"] if "skipped" not in r]
    # the student only at its own step count; the teacher at both
    for backend in ("torch", "onnxruntime"):
        assert sorted((r["sampler"], r["steps"]) for r in rows if r["backend"] == backend) == \
            [("distilled", 4), ("dpmpp2m", 1), ("dpmpp2m", 4)]
    # positive figures only: which of two separately timed parts is larger is noise at repeats=1
    assert all(r["realtime_patients"] > 0 and r["achieved_gflop_per_s"] > 0 and r["decoder_s"] > 0
               and r["batch_s"] > 0 and r["denoiser_s"] >= 0 for r in rows)
    assert res["best"]["sampler"] == "distilled" and res["best"]["steps"] == 4
    assert res["best"]["ratio_vs_neurokit2_per_core"] > 0
    # the rhythm layer's cost, or why it could not be measured (the tiny model draws no beats)
    r = res["rhythm_layer"]
    assert ("beats" in r["skipped"]) if "skipped" in r else min(r["draw_segment_s"].values()) > 0
    assert "Rhythm layer" in table(res)
    if not torch.cuda.is_available():
        [skipped] = [r for r in res["rows"] if "skipped" in r]
        assert "NVIDIA GPU" in skipped["skipped"]
        assert all(math.isnan(r["fraction_of_peak"]) for r in rows)
    # the summary is the backend the service would pick (auto: ONNX Runtime on a CPU), not the
    # fastest in isolation
    if not torch.cuda.is_available():
        assert res["best"]["backend"] == "onnxruntime"
        assert "Serving configuration (onnxruntime distilled 4 steps)" in table(res)


def test_bench_serve_reports_throughput_latency_and_where_the_cores_go(distilled_model_dir, data_dir, tmp_path):
    s = load_settings(env={})
    s.model_path, s.cache_dir, s.data_dir, s.segment_seconds = distilled_model_dir, tmp_path, data_dir, 1.0
    [run] = bench_serve(s, [4], duration=3.0, speed=0.0, realtime=0, realtime_duration=0)["runs"]
    assert run["patients"] == 4 and run["segments_per_s_end_to_end"] > 0
    # every change is accounted for: seen, or overtaken by a later one to the same patient before
    # its segment (two of the ten land between one patient's segments on a loaded host); each
    # patient's last change is never overtaken, so at least four are seen
    assert run["events_measured"] + run["events_superseded"] == 10 and run["events_unseen"] == 0
    assert run["events_measured"] >= 4 and run["event_to_effect_p50_s"] > 0
    assert all(run[f"{h}_mean_s"] >= 0 for h in ("to_service", "in_service", "to_downstream"))
    # bench serve started its own embedded broker: its CPU, this process's and that of the
    # downstream consumer's process are all read
    assert run["broker_cpu_cores"] > 0 and run["service_process_cpu_cores"] > 0
    assert run["downstream_process_cpu_cores"] > 0
    assert len(run["broker_cpu_cores_halves"]) == 2


def test_bench_serve_with_the_null_generator_measures_the_service_alone(tiny_model_dir, data_dir, tmp_path):
    s = load_settings(env={})
    s.model_path, s.cache_dir, s.data_dir, s.segment_seconds = tiny_model_dir, tmp_path, data_dir, 1.0
    [run] = bench_serve(s, [20], duration=2.0, speed=0.0, realtime=0, realtime_duration=0, null=True)["runs"]
    assert run["generator"] == "null" and run["segments_per_s_end_to_end"] > 0 and run["events_measured"] == 10
