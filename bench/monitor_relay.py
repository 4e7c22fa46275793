"""What a monitor (`twin-engine monitor`) costs: segments relayed per second, its CPU, and the
delay from the segments topic to a WebSocket subscriber of every patient.

A `twin-engine monitor` process watches an embedded broker; this script produces 2 s, 12-lead
segment records (as workers write them) at fixed rates, spread over many patients, and reads
the monitor's WebSocket with one subscriber to all of them, in a process of its own. The delay is measured from the
record's production (its start_time field carries the send time) to its frame's arrival.

    .venv/bin/python bench/monitor_relay.py [--rates 250,500,1000,2000] [--seconds 20] [--json F]

Each rate runs on a fresh embedded broker and monitor (the broker slows as a topic grows). A
check started by hand (about two minutes), not a test; results in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import numpy as np
from aiokafka import AIOKafkaProducer

from stream.kafka.embedded import EmbeddedBroker, free_port, process_cpu_seconds
from stream.kafka.topics import ensure_topics
from stream.segments import Segment
from twin_engine.config import KafkaConfig
from twin_engine.metrics import scraped_value

ROOT = Path(__file__).resolve().parents[1]

START = re.compile(r'"start_time": ([0-9.e+-]+)')


async def _scrape(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url + "/metrics") as r:
        return await r.text()


def _subscribe(url: str, conn) -> None:
    """A subscriber to every patient, in a process of its own (so that producing the records
    does not slow reading the frames): sends back each frame's delay in seconds."""

    async def main() -> tuple[list[float], float]:
        delays: list[float] = []
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(url + "/ws?patients=*", max_msg_size=0)
            await ws.receive_json()  # hello
            conn.send("ready")
            expected = None
            while expected is None or len(delays) < expected:
                if expected is None and conn.poll():
                    expected = conn.recv()
                try:
                    msg = await ws.receive(timeout=10 if expected is not None else 1)
                except TimeoutError:
                    if expected is not None:
                        break
                    continue
                m = START.search(msg.data, 0, 300) if isinstance(msg.data, str) else None
                if m:
                    delays.append(time.time() - float(m.group(1)))
            await ws.close()
        return delays, time.process_time() - cpu0

    cpu0 = time.process_time()
    conn.send(asyncio.run(main()))


async def run(broker: EmbeddedBroker, rates: list[int], seconds: float, patients: int) -> list[dict]:
    k = KafkaConfig(bootstrap_servers=broker.bootstrap_servers).namespaced(f"mr{uuid.uuid4().hex[:6]}")
    await ensure_topics(k.client_kwargs(), k.topic_specs())
    port = free_port()
    env = {**os.environ, "TWIN_ENGINE_HTTP_PORT": str(port), **k.to_env()}
    mon = subprocess.Popen([sys.executable, "-m", "twin_engine.ops.cli", "monitor"], env=env, cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    rng = np.random.default_rng(0)
    samples = rng.normal(0, 1, (500, 12)).astype(np.float32)
    leads = ("I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")
    prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=5, max_batch_size=512 * 1024)
    await prod.start()
    out = []
    ctx = multiprocessing.get_context("spawn")
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(600):
                try:
                    async with http.get(url + "/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            for rate in rates:
                here, there = ctx.Pipe()
                sub = ctx.Process(target=_subscribe, args=(url, there), daemon=True)
                sub.start()
                await asyncio.to_thread(here.recv)  # subscribed
                before, cpu0, t0 = await _scrape(http, url), process_cpu_seconds(mon.pid), time.monotonic()
                broker_cpu0, own_cpu0 = broker.cpu_seconds(), time.process_time()
                sent, seq = 0, 0
                while (elapsed := time.monotonic() - t0) < seconds:
                    for _ in range(int(rate * elapsed) - sent):
                        pid = f"bed-{sent % patients}"
                        seg = Segment(pid, seq, time.time(), 250, leads, samples, {"statements": {"SR": 1.0}, "heart_rate": 70.0},
                                      None, "bench")
                        await prod.send(k.topic_segments, seg.to_json(), key=pid.encode())
                        sent += 1
                        seq += sent % patients == 0
                    await asyncio.sleep(0.01)
                await prod.flush()
                produced_s = time.monotonic() - t0
                here.send(sent)  # stop once this many frames came, or after 10 s without one
                delays, sub_cpu = await asyncio.to_thread(here.recv)
                sub.join(10)
                wall = time.monotonic() - t0
                cpu = (process_cpu_seconds(mon.pid) - cpu0) / wall
                others = {"subscriber": sub_cpu / wall, "broker": (broker.cpu_seconds() - broker_cpu0) / wall,
                          "producer": (time.process_time() - own_cpu0) / wall}
                after = await _scrape(http, url)
                relayed = scraped_value(after, "twin_monitor_records_total") - scraped_value(before, "twin_monitor_records_total")
                dropped = scraped_value(after, "twin_subscriber_dropped_frames_total") - scraped_value(
                    before, "twin_subscriber_dropped_frames_total")
                d = np.array(delays) if delays else np.array([np.nan])
                row = {"rate_per_s": rate, "produced": sent, "produced_per_s": round(sent / produced_s, 1),
                       "read_by_monitor": int(relayed), "frames_received": len(delays), "frames_dropped": int(dropped),
                       "delay_p50_ms": round(float(np.median(d)) * 1000, 1),
                       "delay_p99_ms": round(float(np.percentile(d, 99)) * 1000, 1), "monitor_cpu_cores": round(cpu, 3),
                       **{f"{name}_cpu_cores": round(v, 3) for name, v in others.items()}}
                print(json.dumps(row), flush=True)
                out.append(row)
    finally:
        await prod.stop()
        mon.terminate()
        mon.wait(30)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="250,500,1000,2000", help="segments/s produced, one run each")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    for rate in (int(r) for r in args.rates.split(",")):
        # a fresh broker and monitor per rate: the embedded broker slows as a topic grows
        with EmbeddedBroker(port=free_port()) as broker:
            rows += asyncio.run(run(broker, [rate], args.seconds, args.patients))
    if args.json:
        Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                               "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
