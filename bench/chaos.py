"""Chaos: kill -9 one of two workers at random moments under real-time patients, and count what
the streams lost.

Two `twin-engine serve` processes share one consumer group on a fresh embedded broker; the
patients are registered (stored base vectors) and stream in real time. Then, ``--kills`` times,
after a random wait, one worker chosen at random is killed with SIGKILL and started again at
once. At the end both stop (SIGTERM) and the segments topic is read back:

- gaps: sequence numbers missing inside each patient's stream (the promise: 0);
- duplicates: segments published twice (at least once: a kill between a send and its position
  write sends that segment again);
- downtime per kill: for the patients whose segments stalled, the longest pause between two of
  their segments that spans the kill, less one segment period (Tansu keeps a killed member's
  session for ~10 s: the survivor takes its partitions over only then).

    python bench/chaos.py --kills 50 --patients 100 [--gap 10,20] [--json docs/bench/chaos.json]

A check started by hand, not a test; results in docs/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream.events import Event
from stream.kafka.embedded import EmbeddedBroker, free_port
from stream.kafka.producer import send_events
from stream.segments import decode_segment
from twin_engine.config import REPO_ROOT, KafkaConfig
from twin_engine.metrics import scraped_value


def _metrics(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return r.read().decode()
    except OSError:
        return ""


class Worker:
    def __init__(self, env: dict[str, str], port: int, log_dir: Path, name: str) -> None:
        self.env, self.port, self.log_dir, self.name = {**env, "TWIN_ENGINE_HTTP_PORT": str(port)}, port, log_dir, name
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.log_dir / f"{self.name}-{self.starts}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "twin_engine.ops.cli", "serve"], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


async def _read_segments(bs: str, topic: str) -> list:
    c = AIOKafkaConsumer(topic, bootstrap_servers=bs, auto_offset_reset="earliest", enable_auto_commit=False,
                         max_partition_fetch_bytes=8 << 20)
    await c.start()
    out = []
    try:
        while True:
            batch = await c.getmany(timeout_ms=3000, max_records=5000)
            if not batch:
                return out
            for msgs in batch.values():
                for m in msgs:
                    s = decode_segment(m.value)
                    out.append((s.patient_id, s.seq, m.timestamp / 1000))
    finally:
        await c.stop()


async def run(kills: int, patients: int, gap: tuple[float, float], seed: int, segment_seconds: float) -> dict:
    from models.twin import TwinModel

    rng = random.Random(seed)
    base_dim = TwinModel.load(REPO_ROOT / "models" / "default").ibe.cfg.base_dim
    broker = EmbeddedBroker().start()
    k = KafkaConfig(bootstrap_servers=broker.bootstrap_servers, partitions=8).namespaced(f"chaos{uuid.uuid4().hex[:6]}")
    env = {**os.environ, **k.to_env(), "TWIN_ENGINE_SPEED": "1", "TWIN_ENGINE_SEGMENT_SECONDS": str(segment_seconds),
           "OMP_NUM_THREADS": "1"}
    log_dir = Path(tempfile.mkdtemp(prefix="chaos-"))
    workers = [Worker(env, free_port(), log_dir, f"w{i}") for i in range(2)]
    events: list[dict] = []
    try:
        for w in workers:
            w.start()
        deadline = time.monotonic() + 180
        while not all(_metrics(w.port) for w in workers):
            assert time.monotonic() < deadline, f"workers did not start; logs in {log_dir}"
            await asyncio.sleep(1)
        prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
        await prod.start()
        vecs = np.random.default_rng(seed).standard_normal((patients, base_dim))
        await send_events(prod, k.topic_events, [
            Event(f"reg-{i}", f"bed-{i:03d}", "register", reference={"base_vector": vecs[i].tolist()})
            for i in range(patients)])
        await prod.stop()
        while sum(scraped_value(_metrics(w.port), "twin_live_patients") for w in workers) < patients:
            assert time.monotonic() < deadline + 120, f"patients did not all stream; logs in {log_dir}"
            await asyncio.sleep(1)
        await asyncio.sleep(10)
        t0 = time.time()
        for n in range(kills):
            await asyncio.sleep(rng.uniform(*gap))
            w = rng.choice(workers)
            at = time.time()
            w.kill()
            w.start()
            events.append({"kill": n, "worker": w.name, "at": at})
            print(f"kill {n + 1}/{kills}: {w.name} at +{at - t0:.0f} s", flush=True)
        await asyncio.sleep(45)
        codes = [w.stop() for w in workers]
        segs = await _read_segments(broker.bootstrap_servers, k.topic_segments)
    finally:
        for w in workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.kill()
        broker.stop()
    by_pid: dict[str, list[tuple[int, float]]] = {}
    for pid, seq, ts in segs:
        by_pid.setdefault(pid, []).append((seq, ts))
    gaps = dups = 0
    first_seen: dict[str, dict[int, float]] = {}
    for pid, rows in by_pid.items():
        seqs = [s for s, _ in rows]
        gaps += len(set(range(min(seqs), max(seqs) + 1)) - set(seqs))
        dups += len(seqs) - len(set(seqs))
        first_seen[pid] = {}
        for s, ts in rows:
            first_seen[pid].setdefault(s, ts)
    downtime = []
    for e in events:
        worst = 0.0
        for seen in first_seen.values():
            times = sorted(seen.values())
            i = int(np.searchsorted(times, e["at"]))
            if 0 < i < len(times):
                worst = max(worst, times[i] - times[i - 1] - segment_seconds)
        e["downtime_s"] = round(max(0.0, worst), 2)
        downtime.append(e["downtime_s"])
    return {"kills": kills, "patients": patients, "patients_seen": len(by_pid), "segments": len(segs),
            "gaps": gaps, "duplicates": dups, "exit_codes": codes,
            "downtime_s": {"median": float(np.median(downtime)) if downtime else None,
                           "p90": float(np.percentile(downtime, 90)) if downtime else None,
                           "max": max(downtime) if downtime else None},
            "events": events, "logs": str(log_dir)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--patients", type=int, default=100)
    ap.add_argument("--gap", default="10,20", help="seconds between kills: MIN,MAX")
    ap.add_argument("--segment-seconds", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    a = ap.parse_args()
    lo, hi = (float(x) for x in a.gap.split(","))
    result = asyncio.run(run(a.kills, a.patients, (lo, hi), a.seed, a.segment_seconds))
    print(json.dumps({k: v for k, v in result.items() if k != "events"}, indent=1))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
