"""Several worker processes in one consumer group on one machine (and one GPU, where there is
one): how many real-time patients they carry together, with what lateness and event-to-effect.

This is the scale-out the service is built for (patients partitioned by id, one `twin-engine
serve` process per share), measured as deployed: each worker is the CLI in a process of its own,
against one broker. Per run, this script
  1. starts the workers and waits until each answers /readyz;
  2. registers the patients in one producer batch (a stored base vector: onboarding is not
     measured) and waits until the workers stream all of them;
  3. after a warm-up, reads every worker's /metrics, the broker's segment offsets and each
     process's CPU at the start and the end of the window, while it sends one condition change
     a second and reads the annotations topic: a change's opening annotation goes out with the
     first segment in the new state, so send -> annotation seen is event-to-effect end to end.

    python bench/serve_workers.py --workers 1,2 --patients 500,1000 [--seconds 60] [--json F]

Each run has a fresh embedded broker (or --bootstrap). Worker settings come from the environment
as for `serve` (TWIN_ENGINE_BACKEND, ...); this script sets the broker, topics, group, ports and
--segment-seconds. A check started by hand, not a test; results in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from profile_summary import cores_per_thread, summarise, thread_cpu

from models.conditions import CardiacState
from stream.events import Event
from stream.kafka.embedded import EmbeddedBroker, free_port, process_cpu_seconds
from stream.kafka.producer import send_events
from stream.kafka.topics import ensure_topics
from twin_engine.config import KafkaConfig

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb(pid: int) -> float:
    m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(m.group(1)) / 1024 if m else float("nan")


def _series(text: str, name: str) -> dict[str, float]:
    """Every sample of ``name`` in an exposition, by its label string."""
    return {m.group(1) or "": float(m.group(2))
            for m in re.finditer(rf"^{name}(?:{{([^}}]*)}})? ([0-9.e+-]+|\+Inf|NaN)$", text, re.M)}


def _total(texts: list[str], name: str) -> float:
    return sum(sum(_series(t, name).values()) for t in texts)


def _gpu_memory_mb() -> dict[int, float]:
    """GPU memory by process (nvidia-smi), empty where there is no NVIDIA GPU."""
    if shutil.which("nvidia-smi") is None:
        return {}
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=30).stdout
    return {int(p): float(m) for p, m in (line.split(",") for line in out.strip().splitlines() if "," in line)}


class Workers:
    """``n`` `twin-engine serve` processes in one group, each with its own HTTP port and log."""

    def __init__(self, n: int, k: KafkaConfig, segment_seconds: float, logs: Path) -> None:
        self.ports = [free_port() for _ in range(n)]
        self.procs: list[subprocess.Popen] = []
        self.logs = logs
        base = {**os.environ, "TWIN_ENGINE_SEGMENT_SECONDS": str(segment_seconds), "TWIN_ENGINE_SPEED": "1",
                **k.to_env()}
        self.env = [{**base, "TWIN_ENGINE_HTTP_PORT": str(port)} for port in self.ports]

    def launch(self, indices: range) -> None:
        for i in indices:
            with open(self.logs / f"worker-{i}.log", "w") as log:
                self.procs.append(subprocess.Popen([sys.executable, "-m", "twin_engine.ops.cli", "serve"], cwd=ROOT,
                                                   stdout=log, stderr=subprocess.STDOUT, env=self.env[i]))

    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports[:len(self.procs)]]

    def check(self) -> None:
        for i, p in enumerate(self.procs):
            if p.poll() is not None:
                tail = (self.logs / f"worker-{i}.log").read_text()[-3000:]
                raise RuntimeError(f"worker {i} exited with {p.returncode}:\n{tail}")

    def stop(self) -> float:
        """SIGTERM all (finish in-flight segments, commit), then wait; seconds it took."""
        t0 = time.monotonic()
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(90)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return time.monotonic() - t0


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=10)) as r:
            return r.status, await r.text()
    except (aiohttp.ClientError, TimeoutError):
        return 0, ""


async def _scrape(http: aiohttp.ClientSession, workers: Workers) -> list[str]:
    return [t for _, t in await asyncio.gather(*(_get(http, u + "/metrics") for u in workers.urls()))]


def _quantile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


async def run(bootstrap: str, broker: EmbeddedBroker | None, n_workers: int, patients: int, seconds: float,
              warmup: float, segment_seconds: float, logs: Path, py_spy: str = "") -> dict:
    k = KafkaConfig(bootstrap_servers=bootstrap).namespaced(f"sw{uuid.uuid4().hex[:6]}")
    k.partitions = max(8, 4 * n_workers)  # several per worker, so shares stay even
    await ensure_topics(k.client_kwargs(), k.topic_specs())
    t_start = time.monotonic()
    workers = Workers(n_workers, k, segment_seconds, logs)
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=512 * 1024)
    ann = AIOKafkaConsumer(k.topic_annotations, bootstrap_servers=bootstrap, auto_offset_reset="latest",
                           fetch_max_wait_ms=10)
    ends = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await prod.start()
    await ends.start()
    seg_tps = [TopicPartition(k.topic_segments, p) for p in range(k.partitions)]
    try:
        async with aiohttp.ClientSession() as http:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 600

            async def all_ready() -> None:
                while True:  # model loaded and warmed up, partitions owned
                    workers.check()
                    codes = [c for c, _ in await asyncio.gather(*(_get(http, u + "/readyz") for u in workers.urls()))]
                    if all(c == 200 for c in codes):
                        return
                    if loop.time() > deadline:
                        raise TimeoutError(f"workers not ready: {codes}")
                    await asyncio.sleep(0.5)

            # one worker first: it fills the compiler's on-disk caches (Inductor, Triton) that the
            # others then read, rather than all compiling the same kernels at once
            workers.launch(range(1))
            await all_ready()
            t_first = time.monotonic() - t_start
            workers.launch(range(1, n_workers))
            await all_ready()
            t_ready = time.monotonic() - t_start
            await asyncio.sleep(3)  # the group's last rebalance
            base = _base_vector()
            t_reg = time.monotonic()
            await send_events(prod, k.topic_events, (
                Event(f"reg-{i}", f"p{i:06d}", "register", CardiacState(), reference={"base_vector": base})
                for i in range(patients)))
            while True:
                workers.check()
                live = _total(await _scrape(http, workers), "twin_live_patients")
                if live >= patients:
                    break
                if loop.time() > deadline:
                    raise TimeoutError(f"{live:.0f} of {patients} patients streaming")
                await asyncio.sleep(0.5)
            t_streaming = time.monotonic() - t_reg
            await ann.start()
            await asyncio.sleep(warmup)

            pids = [p.pid for p in workers.procs]
            before = await _scrape(http, workers)
            off0 = sum((await ends.end_offsets(seg_tps)).values())
            cpu0 = [process_cpu_seconds(p) for p in pids]
            bcpu0 = broker.cpu_seconds() if broker else None
            # the first worker's threads: their CPU over the window, and with py-spy its profile
            threads0 = thread_cpu(pids[0])
            spy = await asyncio.create_subprocess_exec(
                py_spy, "record", "--pid", str(pids[0]), "--threads", "--format", "raw", "--rate", "100",
                "--duration", str(int(seconds)), "-o", str(logs / "worker0.raw"),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL) if py_spy else None
            t0 = loop.time()
            sent: dict[str, float] = {}
            effect: list[float] = []
            rng = np.random.default_rng(0)
            i = 0
            # changes stop one and a half segments before the end, so each can show in the window
            while (now := loop.time()) < t0 + seconds:
                if now < t0 + seconds - 1.5 * segment_seconds and now >= t0 + i:
                    eid = f"chg-{i}"
                    state = CardiacState({"AFIB": 1.0}, 110) if i % 2 == 0 else CardiacState({"NORM": 1.0}, 70)
                    pid = f"p{rng.integers(patients):06d}"
                    await prod.send(k.topic_events, Event(eid, pid, "condition", state).to_json(), key=pid.encode())
                    sent[eid] = loop.time()
                    i += 1
                for msgs in (await ann.getmany(timeout_ms=50)).values():
                    for m in msgs:
                        a = json.loads(m.value)
                        if a["end_time"] is None and a["event_id"] in sent:
                            effect.append(loop.time() - sent.pop(a["event_id"]))
            wall = loop.time() - t0
            threads1 = thread_cpu(pids[0])
            after = await _scrape(http, workers)
            off1 = sum((await ends.end_offsets(seg_tps)).values())
            cores = [(process_cpu_seconds(p) - c) / wall for p, c in zip(pids, cpu0, strict=True)]
            gpu = _gpu_memory_mb()
            rss = [_rss_mb(p) for p in pids]
            row = {
                "workers": n_workers, "patients": patients, "segment_seconds": segment_seconds,
                "window_s": round(wall, 1), "partitions": k.partitions,
                "first_ready_s": round(t_first, 1), "ready_s": round(t_ready, 1), "all_streaming_s": round(t_streaming, 1),
                "segments_due_per_s": patients / segment_seconds,
                "segments_published_per_s": round((_total(after, "twin_segments_published_total")
                                                   - _total(before, "twin_segments_published_total")) / wall, 1),
                "segments_into_broker_per_s": round((off1 - off0) / wall, 1),
                "deadline_misses": int(_total(after, "twin_deadline_misses_total")
                                       - _total(before, "twin_deadline_misses_total")),
                "deadline_misses_before_window": int(_total(before, "twin_deadline_misses_total")),
                "realtime_lag_max_s": max((v for t in after for v in _series(t, "twin_realtime_lag_seconds").values()),
                                          default=None),
                "live_patients_per_worker": [int(_total([t], "twin_live_patients")) for t in after],
                "changes_sent": i, "changes_seen": len(effect),
                "event_to_effect_p50_s": _quantile(effect, 50), "event_to_effect_p99_s": _quantile(effect, 99),
                "event_to_effect_max_s": max(effect, default=None),
                "effect_within_one_segment_share": float(np.mean(np.array(effect) <= segment_seconds))
                if effect else None,
                "worker_cpu_cores": [round(c, 2) for c in cores], "worker_cpu_cores_sum": round(sum(cores), 2),
                "worker_rss_mb": [round(r) for r in rss],
                # where a worker's CPU goes: its busiest threads (the event loop, the generation
                # thread; worker0-profile.txt names them when py-spy ran)
                "worker0_thread_cpu_cores": [round(c, 2) for c, _ in cores_per_thread(threads0, threads1, wall)
                                             if c >= 0.01],
                "worker_gpu_memory_mb": [gpu.get(p) for p in pids] if gpu else None,
                "broker_cpu_cores": round((broker.cpu_seconds() - bcpu0) / wall, 2) if broker else None,
                "broker_rss_mb": round(_rss_mb(broker.pid)) if broker and broker.pid else None,
            }
            if spy is not None:
                await spy.wait()
                (logs / "worker0-profile.txt").write_text(summarise(logs / "worker0.raw", 30, (threads0, threads1), wall))
    finally:
        with contextlib.suppress(Exception):
            await ann.stop()
        await ends.stop()
        await prod.stop()
        stop_s = workers.stop()
    row["stop_s"] = round(stop_s, 1)
    row["worker_exit_codes"] = [p.returncode for p in workers.procs]
    return row


def _base_vector() -> list[float]:
    """A unit base vector of the served model's size (generation costs the same for any)."""
    from twin_engine.config import load_settings

    dim = json.loads((load_settings().model_path / "config.json").read_text())["ibe"]["base_dim"]
    return [dim ** -0.5] * dim


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2", help="worker processes, one run each")
    ap.add_argument("--patients", default="200,400", help="patients in each run (one count per run)")
    ap.add_argument("--seconds", type=float, default=60, help="measured window")
    ap.add_argument("--warmup", type=float, default=20, help="seconds streamed before the window")
    ap.add_argument("--segment-seconds", type=float, default=2.0)
    ap.add_argument("--bootstrap", default="", help="an external broker (default: a fresh embedded one per run)")
    ap.add_argument("--logs", default="", help="keep the workers' logs here")
    ap.add_argument("--json", default=None)
    ap.add_argument("--py-spy", default="", help="py-spy binary: profile the first worker over the window")
    args = ap.parse_args()
    ws = [int(w) for w in args.workers.split(",")]
    ns = [int(n) for n in args.patients.split(",")]
    if len(ns) != len(ws):
        ap.error("--patients needs one count per --workers entry")
    logs = Path(args.logs or tempfile.mkdtemp(prefix="serve-workers-"))
    logs.mkdir(parents=True, exist_ok=True)
    rows = []
    for w, n in zip(ws, ns, strict=True):
        run_logs = logs / f"w{w}-n{n}"
        run_logs.mkdir(exist_ok=True)
        try:
            if args.bootstrap:
                row = asyncio.run(run(args.bootstrap, None, w, n, args.seconds, args.warmup, args.segment_seconds,
                                      run_logs, args.py_spy))
            else:
                with EmbeddedBroker(port=free_port()) as broker:
                    row = asyncio.run(run(broker.bootstrap_servers, broker, w, n, args.seconds, args.warmup,
                                          args.segment_seconds, run_logs, args.py_spy))
        except Exception as exc:  # the next run may still tell something; the error is kept
            row = {"workers": w, "patients": n, "error": f"{type(exc).__name__}: {exc}"[-3000:]}
        print(json.dumps(row), flush=True)
        rows.append(row)
        if args.json:
            Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                                   "machine": os.uname().nodename, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
