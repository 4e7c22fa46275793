"""``twin-engine bench generate``: segments per second and real-time capacity per backend, sampler,
step count and batch size, split into denoiser and decoder time, with neurokit2's 12-lead
simulator timed in the same run. Medians of repeated runs; figures, never pass/fail."""

from __future__ import annotations

import logging
import statistics
import time
import warnings
from datetime import UTC, datetime

import numpy as np
import torch

from models.conditions import CardiacState
from twin_engine.config import Settings
from twin_engine.ops.bench.common import machine as _machine

log = logging.getLogger(__name__)


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# dense FP16/BF16 tensor-core peaks (TFLOP/s) from NVIDIA's data sheets, by device-name fragment
PEAK_TFLOPS_FP16 = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4, "A100": 312.0,
                    "L40S": 362.0, "L4": 121.0}


def peak_tflops(device: str) -> float | None:
    """The GPU's dense half-precision peak, for the achieved fraction; None on the CPU or an
    unlisted card."""
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_TFLOPS_FP16.items() if k in name), None)


def flops_per_window(model) -> dict[str, float]:
    """FLOPs of one denoiser call (one window, no CFG) and one decoder call, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    from models.export import example_inputs

    z, t, b, c = example_inputs(model, 1)
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            model.dit(z, t, b, c)
        den = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            model.ae.decode(z)
        dec = fc.get_total_flops()
    return {"denoiser_gflop_per_call": den / 1e9, "decoder_gflop_per_window": dec / 1e9}


def _neurokit_rate(fs: int, seconds: float = 10.0, n: int = 5) -> float:
    import neurokit2 as nk

    def one():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nk.ecg_simulate(duration=seconds, sampling_rate=fs, heart_rate=72, method="multileads", random_state=1)

    return 1.0 / _median_time(one, n)


def _rhythm_layer(model, settings: Settings, model_segment_s: float | None, repeats: int = 50) -> dict:
    """The rhythm layer's cost in the same run: a patient's bank (the twin's windows and XQRS,
    once per morphology) and drawing one segment, beside the model making one segment."""
    from models.data.ptbxl import PTBXL
    from models.rhythm import BeatSchedule, Rhythm
    from models.rhythm.morphology import bank_for
    from models.rhythm.render import BankError, BeatRenderer
    from models.rhythm.track import RhythmTrack

    fs, seg = model.meta.fs, int(settings.segment_seconds * model.meta.fs)
    db = PTBXL(settings.data_dir / "ptbxl-subset")
    base = model.encode([db.record(db.ecg_ids[0]).signal])
    try:
        bank = bank_for(model, base, CardiacState(), 1)
    except BankError as exc:  # a model whose windows hold no beats: its streams fall back (docs/RHYTHM.md)
        return {"skipped": str(exc)}
    bank_s = _median_time(lambda: bank_for(model, base, CardiacState(), 1), 3)
    draw = {}
    for name, rate in (("sinus", 70.0), ("sinus_tachy", 180.0), ("vt", 240.0)):
        track = RhythmTrack(BeatSchedule(Rhythm(name, rate=rate), 0.0, 1), BeatRenderer(bank, 1))
        clock = [0.0]

        def one(track=track, clock=clock):
            track.window(clock[0], seg)
            clock[0] += seg / fs
        draw[f"{name} {rate:.0f}"] = _median_time(one, repeats)
    worst = max(draw.values())
    return {"segment_seconds": settings.segment_seconds, "bank_s": bank_s, "draw_segment_s": draw,
            "model_segment_s": model_segment_s,
            "draw_over_model": worst / model_segment_s if model_segment_s else None}


def bench_generate(settings: Settings, backends: list[str], samplers: list[str], steps_list: list[int],
                   batches: list[int], repeats: int = 5) -> dict:
    from models.twin import TwinModel
    from twin_engine.backends.runtime import attach_backend, choose_backend
    from twin_engine.worker.generator import ContinuousGenerator, GenRequest

    rows = []
    fs = None
    flops = flops_per_window(TwinModel.load(settings.model_path, "cpu"))
    for backend in backends:
        s = Settings(**{**settings.__dict__, "backend": backend})
        try:
            name, device = choose_backend(s)
        except Exception as exc:
            rows.append({"backend": backend, "skipped": str(exc)})
            continue
        model = TwinModel.load(settings.model_path, "cpu")
        attach_backend(model, name, device, settings.cache_dir, max(batches))
        fs = model.meta.fs
        for sampler in samplers:
            for steps in steps_list:
                if model.resolve_sampler(sampler, steps) == "distilled" and \
                        (model.student is None or steps != model.meta.student_steps):
                    continue  # the student runs only at the step count it was trained for
                gen = ContinuousGenerator(model, steps, sampler, settings.guidance_scale)
                seconds_per_window = gen.new_per_window / fs
                for b in batches:
                    base = np.tile(model.encode([np.random.default_rng(0).standard_normal((model.meta.window, 12)).astype(np.float32)]), (b, 1))
                    tail = np.random.default_rng(1).standard_normal((gen.context, 12)).astype(np.float32)
                    reqs = [GenRequest(base[i], CardiacState(), tail, gen.new_per_window, i) for i in range(b)]
                    if device == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    total = _median_time(lambda reqs=reqs, gen=gen: gen.generate(reqs), repeats)
                    # split: the decoder alone on this batch's latents
                    z = torch.randn(b, model.dit.cfg.latent_channels, model.tokens, device=model.device)
                    dec = _median_time(lambda z=z, model=model: model.decode(z), repeats)
                    # GPU: peak allocation per patient at this batch; CPU: not separable from the
                    # allocator's pool, see "state per patient" below
                    mem = torch.cuda.max_memory_allocated() / b if device == "cuda" else float("nan")
                    windows_per_s = b / total
                    calls = steps * (1 if gen.sampler == "distilled" or settings.guidance_scale == 1.0 else 2)
                    gflop_per_s = windows_per_s * (calls * flops["denoiser_gflop_per_call"]
                                                   + flops["decoder_gflop_per_window"])
                    peak = peak_tflops(device)
                    rows.append({
                        "backend": name, "device": device, "sampler": gen.sampler, "steps": steps, "batch": b,
                        "batch_s": total, "decoder_s": dec, "denoiser_s": max(0.0, total - dec),
                        "segments_10s_per_s": windows_per_s * seconds_per_window / 10.0,
                        "realtime_patients": windows_per_s * seconds_per_window,
                        "memory_per_patient_mb": mem / 2**20,
                        "achieved_gflop_per_s": gflop_per_s,
                        "fraction_of_peak": gflop_per_s / (peak * 1e3) if peak else float("nan"),
                    })
                    print(_row_text(rows[-1]), flush=True)
    threads = torch.get_num_threads()
    nk_rate = _neurokit_rate(fs or 250)
    continuity = None
    model = TwinModel.load(settings.model_path, "cpu")  # eager PyTorch: for the figures below
    if fs:
        from twin_engine.worker.generator import measure_continuity

        base = model.encode([np.random.default_rng(0).standard_normal((model.meta.window, 12)).astype(np.float32)])
        continuity = measure_continuity(ContinuousGenerator(model, settings.steps, settings.sampler, settings.guidance_scale),
                                        base, CardiacState(), 10, int(settings.segment_seconds * fs))
    # the figure that counts: the serving sampler at the serving step count (fewer steps of the
    # teacher are faster but not usable, see docs/EVALUATION.md)
    serving = model.resolve_sampler(settings.sampler, settings.steps)
    candidates = [r for r in rows if "realtime_patients" in r and r["sampler"] == serving and r["steps"] == settings.steps]
    # ... on the backend the service would pick with these settings, when it was measured
    # (in isolation another backend can be a little faster; the service's choice is what serves)
    from twin_engine.backends.runtime import BackendUnavailable, choose_backend

    try:
        served = [r for r in candidates if (r["backend"], r["device"]) == choose_backend(settings)]
    except BackendUnavailable:  # a backend named in the settings that this machine lacks
        served = []
    best = max(served or candidates, key=lambda r: r["realtime_patients"], default=None)
    state_kb = None
    if fs:
        from twin_engine.registry import Change, Patient
        from twin_engine.worker.generator import pack_tail

        seg = int(settings.segment_seconds * fs)
        p = Patient("p00001", [0.0] * model.ibe.cfg.base_dim, "m", {"statements": {"SR": 1.0}, "heart_rate": 70.0},
                    tail_b64=pack_tail(np.zeros((ContinuousGenerator(model).context, 12), np.float32)),
                    history=[Change("e", {"statements": {"SR": 1.0}}, 0, 0.0)] * 50)
        state_kb = (len(p.to_json()) + settings.lookahead_segments * seg * 12 * 4) / 1024
    # the model's cost of one segment in the serving configuration (one patient's share of the best batch)
    model_segment_s = None
    if best and fs:
        gen = ContinuousGenerator(model, settings.steps, settings.sampler, settings.guidance_scale)
        model_segment_s = best["batch_s"] / best["batch"] * settings.segment_seconds * fs / gen.new_per_window
    rhythm = _rhythm_layer(model, settings, model_segment_s) if fs else None
    result = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": _machine(),
              "rhythm_layer": rhythm,
              "service_state_kb_per_patient": state_kb,
              "model": str(settings.model_path), "rows": rows, "continuity": continuity,
              "flops": flops,
              "neurokit2": {"segments_10s_per_s_per_core": nk_rate, "note": "single-threaded, 12-lead multileads, 10 s"}}
    if best:
        ours_per_core = best["segments_10s_per_s"] / (threads if best["device"] == "cpu" else 1)
        result["best"] = {**best, "segments_10s_per_s_per_core": ours_per_core,
                          "ratio_vs_neurokit2_per_core": ours_per_core / nk_rate}
    return result


def _row_text(r: dict) -> str:
    return (f"{r['backend']:<11} {r['device']:<4} {r['sampler']:<7} steps={r['steps']:<2} batch={r['batch']:<4} "
            f"batch={r['batch_s'] * 1000:8.1f} ms (decoder {r['decoder_s'] * 1000:6.1f} ms) "
            f"10s-segments/s={r['segments_10s_per_s']:8.2f} realtime patients={r['realtime_patients']:8.1f} "
            f"gpu MB/patient={r['memory_per_patient_mb']:.2f}")


def table(result: dict) -> str:
    lines = [f"Benchmark {result['date']} on {result['machine']}", "",
             "| backend | device | sampler | steps | batch | batch ms | decoder ms | 10 s segments/s | real-time patients "
             "| GPU MB/patient | GFLOP/s | of peak |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['backend']} | skipped: {r['skipped']} |||||||||||")
            continue
        lines.append(f"| {r['backend']} | {r['device']} | {r['sampler']} | {r['steps']} | {r['batch']} | "
                     f"{r['batch_s'] * 1000:.1f} | {r['decoder_s'] * 1000:.1f} | {r['segments_10s_per_s']:.2f} | "
                     f"{r['realtime_patients']:.1f} | {r['memory_per_patient_mb']:.2f} | "
                     f"{r['achieved_gflop_per_s']:.1f} | {r['fraction_of_peak']:.2%} |")
    if result.get("service_state_kb_per_patient"):
        lines += ["", f"Service state per patient (registry record, continuity tail, look-ahead segments): "
                  f"{result['service_state_kb_per_patient']:.0f} KB."]
    f = result.get("flops")
    if f:
        lines += ["", f"FLOPs per window: denoiser {f['denoiser_gflop_per_call']:.3f} GFLOP per call "
                  f"(x2 with guidance, x steps), decoder {f['decoder_gflop_per_window']:.3f} GFLOP."]
    c = result.get("continuity")
    if c:
        lines += ["", f"Continuity ({result.get('model')}): mean boundary jump {c['boundary_jump_mean']:.4f} vs mean "
                  f"within-segment step {c['within_step_mean']:.4f} (ratio {c['ratio_mean']:.2f}); p99 "
                  f"{c['boundary_jump_p99']:.4f} vs {c['within_step_p99']:.4f}."]
    r = result.get("rhythm_layer")
    if r and "skipped" in r:
        lines += ["", f"Rhythm layer: not measured ({r['skipped']})."]
    elif r:
        draws = ", ".join(f"{k} bpm {v * 1000:.2f} ms" for k, v in r["draw_segment_s"].items())
        lines += ["", f"Rhythm layer (same run): a patient's beat bank {r['bank_s'] * 1000:.0f} ms (once per morphology); "
                  f"drawing a {r['segment_seconds']:g} s segment: {draws}"
                  + (f"; the model's own segment {r['model_segment_s'] * 1000:.2f} ms (serving batch share), "
                     f"so the slowest draw is {r['draw_over_model']:.0%} of it." if r.get("model_segment_s") else ".")]
    nk = result["neurokit2"]["segments_10s_per_s_per_core"]
    lines += ["", f"neurokit2 ecg_simulate(multileads), 10 s 12-lead: {nk:.2f} segments/s per core (same run)."]
    if "best" in result:
        b = result["best"]
        lines.append(f"Serving configuration ({b['backend']} {b['sampler']} {b['steps']} steps), best batch {b['batch']}: "
                     f"{b['realtime_patients']:.0f} real-time patients; {b['segments_10s_per_s_per_core']:.2f} "
                     f"segments/s per core = {b['ratio_vs_neurokit2_per_core']:.1f}x neurokit2 per core.")
    return "\n".join(lines)


# ---- serve --------------------------------------------------------------------------------------
