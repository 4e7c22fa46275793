"""``twin-engine bench generate|serve``: figures, never pass/fail.

generate: segments per second and real-time capacity per backend, sampler, step count and batch
size, split into denoiser and decoder time, with neurokit2's 12-lead simulator timed in the same
run. serve: the whole service through the broker, for several patient counts.
Medians of repeated runs; the machine is shared, so ratios measured side by side are the figures
to quote.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import multiprocessing
import os
import platform
import statistics
import time
import uuid
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from models.conditions import CardiacState
from twin_engine.config import Settings

log = logging.getLogger(__name__)


def _machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} x{os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


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
    result = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": _machine(),
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
    nk = result["neurokit2"]["segments_10s_per_s_per_core"]
    lines += ["", f"neurokit2 ecg_simulate(multileads), 10 s 12-lead: {nk:.2f} segments/s per core (same run)."]
    if "best" in result:
        b = result["best"]
        lines.append(f"Serving configuration ({b['backend']} {b['sampler']} {b['steps']} steps), best batch {b['batch']}: "
                     f"{b['realtime_patients']:.0f} real-time patients; {b['segments_10s_per_s_per_core']:.2f} "
                     f"segments/s per core = {b['ratio_vs_neurokit2_per_core']:.1f}x neurokit2 per core.")
    return "\n".join(lines)


# ---- serve --------------------------------------------------------------------------------------

def _cpu_shares(marks: list[tuple[float, float | None, float, float | None]]) -> dict:
    """Cores used by the broker, this process (the service) and the downstream consumer's
    process between the marks (wall time, then each one's CPU s): start, middle and end of a run."""
    if len(marks) < 2:
        return {}
    out = {}
    for name, i in (("broker", 1), ("service_process", 2), ("downstream_process", 3)):
        if any(m[i] is None for m in marks):
            continue
        share = [(b[i] - a[i]) / (b[0] - a[0]) for a, b in itertools.pairwise(marks) if b[0] > a[0]]
        out[f"{name}_cpu_cores"] = (marks[-1][i] - marks[0][i]) / (marks[-1][0] - marks[0][0])
        out[f"{name}_cpu_cores_halves"] = share
    return out


def null_generate(reqs: list, leads: int) -> list[np.ndarray]:
    """Instant "generation" (flat zeros): what is left to measure is the service itself."""
    return [np.zeros((r.n_samples, leads), np.float32) for r in reqs]


def _downstream(kafka, topic: str, conn) -> None:
    """The benchmark's downstream consumer, in a process of its own as a monitor or a sink would
    be. It decodes every segment and sends back, per fetch, (seen at, patient, seq, event id,
    start time), "seen at" on the machine's monotonic clock, which is the service's loop clock
    too. It stops when the parent sends anything. Until 2026-11-26 it ran in the service's
    process and event loop, where that hop's p99 was 70-139 ms."""

    async def main() -> None:
        from aiokafka import AIOKafkaConsumer

        from stream.segments import decode_segment

        consumer = AIOKafkaConsumer(topic, auto_offset_reset="earliest", **kafka.consumer_kwargs())
        await consumer.start()
        conn.send("ready")
        try:
            while not conn.poll():
                rows = []
                for msgs in (await consumer.getmany(timeout_ms=100)).values():
                    for m in msgs:
                        seg = decode_segment(m.value)
                        rows.append((time.monotonic(), seg.patient_id, seg.seq, seg.event_id, seg.start_time))
                if rows:
                    conn.send(rows)
        finally:
            await consumer.stop()
            conn.send("stopped")

    asyncio.run(main())


async def _register(svc, base: np.ndarray, patients: int) -> None:
    """Patients p00000, p00001, ... from one stored base vector, in one producer batch:
    onboarding cost is not what the service benchmarks measure."""
    from stream.events import Event

    await svc.send_events(Event(f"reg-{i}", f"p{i:05d}", "register", CardiacState(),
                                reference={"base_vector": base.tolist()}) for i in range(patients))


async def _serve_once(settings: Settings, model, patients: int, duration: float, speed: float,
                      changes: int, data_dir: Path,
                      broker_cpu: Callable[[], float | None] = lambda: None, null: bool = False) -> dict:
    from models.data.ptbxl import PTBXL
    from stream.events import Event
    from stream.kafka.embedded import process_cpu_seconds
    from twin_engine.worker.service import TwinService

    s = Settings(**{**settings.__dict__, "speed": speed})
    k = s.kafka = settings.kafka.namespaced(f"bench{uuid.uuid4().hex[:6]}")
    svc = TwinService(s, model, generate=functools.partial(null_generate, leads=len(model.meta.leads)) if null else None)
    await svc.start()
    await asyncio.wait_for(svc.ready.wait(), 60)
    db = PTBXL(data_dir / "ptbxl-subset", model.meta.fs)
    base = model.encode([db.record(db.ecg_ids[0]).signal])
    t_reg = time.perf_counter()
    await _register(svc, base, patients)
    log.info("%d registrations sent in %.1f s", patients, time.perf_counter() - t_reg)
    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe()
    down = ctx.Process(target=_downstream, args=(k, k.topic_segments, there), daemon=True)
    down.start()
    if not await asyncio.to_thread(here.poll, 120) or here.recv() != "ready":
        raise RuntimeError("the downstream consumer did not start")
    sent: dict[str, tuple[float, float]] = {}  # event id -> (loop time, wall time) at send
    effect: list[float] = []
    overhead: list[float] = []  # effect latency beyond the wait for the next segment boundary
    # where the time goes: send -> service has applied it; applied -> segment published (the wait
    # for the boundary, or regeneration); published -> seen by the downstream consumer
    hops: dict[str, list[float]] = {"to_service": [], "in_service": [], "to_downstream": []}
    count = 0
    t_first = None
    loop = asyncio.get_running_loop()  # its clock is time.monotonic(), as the downstream process's
    t_end = loop.time() + duration + 30
    change_times = np.linspace(duration * 0.1, duration * 0.9, changes) if changes else []
    t0 = loop.time()
    next_change = 0
    measuring_until = None
    marks: list[tuple[float, float | None, float, float | None]] = []  # CPU at the start, middle and end

    def mark() -> None:
        marks.append((loop.time(), broker_cpu(), time.process_time(), process_cpu_seconds(down.pid)))

    while loop.time() < t_end:
        if t_first is not None and len(marks) == 1 and loop.time() >= t_first + duration / 2:
            mark()
        if t_first is not None and next_change < len(change_times) and loop.time() - t_first >= change_times[next_change]:
            pid = f"p{next_change * 7 % patients:05d}"
            eid = f"chg-{next_change}"
            sent[eid] = (loop.time(), time.time())
            state = CardiacState({"AFIB": 1.0}, 110) if next_change % 2 == 0 else CardiacState({"NORM": 1.0}, 70)
            await svc.send_event(Event(eid, pid, "condition", state))
            next_change += 1
        rows = []
        while here.poll():
            rows += here.recv()
        if not rows:
            await asyncio.sleep(0.02)
        for seen, patient_id, seq, event_id, start_time in rows:
            if t_first is None and seq >= 1:
                t_first = seen
                measuring_until = t_first + duration
                count = 0
                mark()
            if t_first is not None and seen <= measuring_until:
                count += 1
            if event_id in sent:
                t_loop, t_wall = sent.pop(event_id)
                effect.append(seen - t_loop)
                stream = svc.streams.get(patient_id)
                ch = stream.change if stream is not None else None
                if ch is not None and ch.event_id == event_id and ch.published is not None:
                    hops["to_service"].append(ch.received - t_loop)
                    hops["in_service"].append(ch.published - ch.received)
                    hops["to_downstream"].append(seen - ch.published)
                if speed == 1.0:  # stream time is wall time: the segment starts at its boundary
                    overhead.append(effect[-1] - max(0.0, start_time - t_wall))
        if measuring_until is not None and loop.time() > measuring_until and len(marks) == 2:
            mark()
        if measuring_until is not None and loop.time() > measuring_until and not sent:
            break
    here.send("stop")
    while await asyncio.to_thread(here.poll, 30) and here.recv() != "stopped":
        pass
    down.join(10)
    misses = svc.metrics.value("twin_deadline_misses_total")
    t_stop = time.perf_counter()
    await svc.stop()
    log.info("service stopped in %.1f s", time.perf_counter() - t_stop)
    span = duration if t_first is not None else loop.time() - t0
    return {"patients": patients, "speed": speed, "duration_s": duration, "generator": "null" if null else "model",
            "segments_per_s_end_to_end": count / span, "segment_seconds": s.segment_seconds,
            "event_to_effect_p50_s": float(np.percentile(effect, 50)) if effect else None,
            "event_to_effect_p99_s": float(np.percentile(effect, 99)) if effect else None,
            "events_measured": len(effect), "deadline_misses": misses,
            # how many changes were visible downstream within one segment length of being sent
            "effect_within_one_segment_share": float(np.mean(np.array(effect) <= s.segment_seconds / speed))
            if effect and speed else None,
            # by design a change waits for the next segment boundary (uniform over one segment);
            # what the service adds on top is this:
            "overhead_p50_s": float(np.percentile(overhead, 50)) if overhead else None,
            "overhead_p99_s": float(np.percentile(overhead, 99)) if overhead else None,
            **{f"{k}_{q}_s": float(np.percentile(v, int(q[1:]))) for k, v in hops.items() if v
               for q in ("p50", "p99")},
            **{f"{k}_mean_s": float(np.mean(v)) for k, v in hops.items() if v},
            # the same means over the first and the second half of the events: a hop that slows
            # as the run goes on (the embedded broker's in-memory log grows) shows here
            **{f"{k}_mean_halves_s": [float(np.mean(h)) for h in np.array_split(np.array(v), 2)]
               for k, v in hops.items() if len(v) >= 2},
            # where the machine's cores go: the embedded broker's share grows with its log
            **_cpu_shares(marks)}


def bench_serve(settings: Settings, counts: list[int], duration: float, speed: float, realtime: int,
                realtime_duration: float, null: bool = False) -> dict:
    """``null``: instant generation instead of the model, so the figures are the service's own
    ceiling per worker (scheduling, publishing, registry writes, the downstream consumer)."""
    from twin_engine.ops.app import bootstrap_or_embedded, load_model

    model = load_model(settings)
    bootstrap, broker = bootstrap_or_embedded(settings)
    settings.kafka.bootstrap_servers = bootstrap
    cpu = broker.cpu_seconds if broker is not None else (lambda: None)
    runs = []
    try:
        for n in counts:
            r = asyncio.run(_serve_once(settings, model, n, duration, speed, 10, settings.data_dir, cpu, null))
            runs.append(r)
            print(json.dumps(r), flush=True)
        if realtime:
            # one condition change a second: about 480 in 10 minutes, enough for a p99 that is
            # not one or two events
            changes = max(10, int(realtime_duration * 0.8))
            r = asyncio.run(_serve_once(settings, model, realtime, realtime_duration, 1.0, changes, settings.data_dir,
                                        cpu, null))
            runs.append(r)
            print(json.dumps(r), flush=True)
    finally:
        if broker is not None:
            broker.stop()
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": _machine(), "runs": runs}


# ---- WebSocket subscribers -----------------------------------------------------------------------

async def _ws_once(settings: Settings, model, patients: int, clients: int, duration: float,
                   deflate: bool) -> dict:
    import aiohttp

    from stream.kafka.embedded import free_port
    from twin_engine.metrics import Metrics
    from twin_engine.web.dashboard import SubscriberHub
    from twin_engine.web.http_api import serve_http
    from twin_engine.worker.service import TwinService

    s = Settings(**{**settings.__dict__})
    s.kafka = settings.kafka.namespaced(f"benchws{uuid.uuid4().hex[:6]}")
    metrics = Metrics()
    hub = SubscriberHub(deflate=deflate, metrics=metrics)
    svc = TwinService(s, model, sinks=[hub], metrics=metrics)
    await svc.start()
    port = free_port()
    runner = await serve_http(svc, "127.0.0.1", port, hub)
    await asyncio.wait_for(svc.ready.wait(), 60)
    base = np.ones(model.ibe.cfg.base_dim, np.float32) / np.sqrt(model.ibe.cfg.base_dim)
    await _register(svc, base, patients)
    received = [0] * clients

    async def client(i: int, session: aiohttp.ClientSession) -> None:
        # offering permessage-deflate as browsers do: the hub accepts it only with ``deflate``
        async with session.ws_connect(f"http://127.0.0.1:{port}/ws?patients=*", max_msg_size=0, compress=15) as ws:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    received[i] += 1

    rss = []
    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(client(i, session)) for i in range(clients)]
        pub0 = svc.metrics.value("twin_segments_published_total")
        t0, cpu0 = time.monotonic(), time.process_time()
        while time.monotonic() - t0 < duration:
            await asyncio.sleep(1.0)
            with open("/proc/self/status") as f:
                rss.append(next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024)
        published = svc.metrics.value("twin_segments_published_total") - pub0
        cpu = (time.process_time() - cpu0) / (time.monotonic() - t0)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    dropped = svc.metrics.value("twin_subscriber_dropped_frames_total")
    await runner.cleanup()
    await svc.stop()
    return {"patients": patients, "clients": clients, "duration_s": duration, "deflate": deflate,
            "segments_published_per_s": published / duration,
            # the service and the clients share this process: the clients' reading is in it too
            "process_cpu_cores": cpu,
            "frames_received_per_client_per_s": float(np.median(received)) / duration,
            "dropped_frames": dropped, "rss_mb_start": rss[0], "rss_mb_max": max(rss), "rss_mb_end": rss[-1]}


def bench_ws(settings: Settings, patients: int, clients: int, duration: float,
             deflate: tuple[bool, ...] = (False,)) -> dict:
    from twin_engine.ops.app import bootstrap_or_embedded, load_model

    model = load_model(settings)
    bootstrap, broker = bootstrap_or_embedded(settings)
    settings.kafka.bootstrap_servers = bootstrap
    try:
        runs = []
        for d in deflate:  # side by side, in the order given
            runs.append(asyncio.run(_ws_once(settings, model, patients, clients, duration, d)))
            print(json.dumps(runs[-1]), flush=True)
    finally:
        if broker is not None:
            broker.stop()
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": _machine(), "runs": runs}
