"""``twin-engine bench serve|ws``: the whole service through the broker, for several patient
counts and in real time (deadline misses, event-to-effect latency, CPU shares of service and
broker), and the WebSocket fan-out to many subscribers. Figures, never pass/fail; the machine
is shared, so ratios measured side by side are the figures to quote."""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import multiprocessing
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from models.conditions import CardiacState
from twin_engine.config import Settings
from twin_engine.ops.bench.common import machine as _machine

log = logging.getLogger(__name__)


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
    sent: dict[str, tuple[float, float, str]] = {}  # event id -> (loop time, wall time, patient) at send
    superseded = 0  # changes overtaken by a later one to the same patient before a segment showed them
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
            sent[eid] = (loop.time(), time.time(), pid)
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
                # the wait for the last effects counts from the first segment, not from the start: a
                # loaded host that is slow to the first segment still sends and measures every change
                t_end = t_first + duration + 30
                count = 0
                mark()
            if t_first is not None and seen <= measuring_until:
                count += 1
            if event_id in sent:
                t_loop, t_wall, _ = sent.pop(event_id)
                # a segment shows only the latest change: earlier ones to this patient still waiting
                # were overtaken (on a slow host two changes can land between its segments)
                older = [e for e, (t, _, p) in sent.items() if p == patient_id and t < t_loop]
                for e in older:
                    del sent[e]
                superseded += len(older)
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
            "events_measured": len(effect), "events_superseded": superseded,
            "events_unseen": len(sent), "deadline_misses": misses,
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
    from stream.subscribers import SubscriberHub
    from twin_engine.metrics import Metrics
    from twin_engine.web.dashboard import page_hello
    from twin_engine.web.http_api import serve_http
    from twin_engine.worker.service import TwinService

    s = Settings(**{**settings.__dict__})
    s.kafka = settings.kafka.namespaced(f"benchws{uuid.uuid4().hex[:6]}")
    metrics = Metrics()
    hub = SubscriberHub(deflate=deflate, metrics=metrics, hello=page_hello(s, model.meta.vocab))
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
