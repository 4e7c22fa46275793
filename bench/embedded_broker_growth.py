"""How the embedded broker (Tansu, memory store) slows as a topic's log grows.

Long `bench serve` runs showed the published -> seen-downstream hop getting slower over the run.
This isolates the broker from the service: one producer trickles segment-sized records at the
rate 100 real-time patients publish (50/s), one consumer follows the tail as a downstream monitor
does, and between measurements bulk records grow the log. Per log size it prints the broker's CPU
(in cores) and the produce -> consume latency, and, as controls, the broker's CPU with the
producer alone and with the consumer alone at an idle tail.

    .venv/bin/python bench/embedded_broker_growth.py [--payload 16303] [--steps 5] [--bulk 8000]

Figures, not pass/fail; results in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream.kafka.embedded import EmbeddedBroker
from stream.kafka.topics import TopicSpec, ensure_topics

TOPIC = "growth.segments"


def _rss_mb(broker: EmbeddedBroker) -> float | None:
    try:
        with open(f"/proc/{broker.pid}/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))
    except (OSError, StopIteration):
        return None


async def _window(broker: EmbeddedBroker, seconds: float, produce, consume) -> dict:
    """Broker CPU over ``seconds`` while ``produce`` and/or ``consume`` run."""
    c0, t0 = broker.cpu_seconds(), time.monotonic()
    await asyncio.gather(*(f(t0 + seconds) for f in (produce, consume) if f is not None))
    return (broker.cpu_seconds() - c0) / (time.monotonic() - t0)


async def run(broker: EmbeddedBroker, payload: bytes, steps: int, bulk: int, partitions: int) -> list[dict]:
    bs = broker.bootstrap_servers
    await ensure_topics({"bootstrap_servers": bs}, [TopicSpec(TOPIC, partitions)])
    prod = AIOKafkaProducer(bootstrap_servers=bs, linger_ms=0)
    await prod.start()
    cons = AIOKafkaConsumer(TOPIC, bootstrap_servers=bs, fetch_max_wait_ms=10, auto_offset_reset="latest")
    await cons.start()
    loop = asyncio.get_running_loop()
    sent: dict[bytes, float] = {}
    lat: list[float] = []
    records = 0

    async def trickle(until: float) -> None:  # 50 records/s, keys spread over the partitions
        nonlocal records
        while time.monotonic() < until:
            key = f"probe-{records}".encode()
            sent[key] = loop.time()
            await prod.send(TOPIC, payload, key=key)
            records += 1
            await asyncio.sleep(0.02)

    async def follow(until: float) -> None:
        while time.monotonic() < until:
            for msgs in (await cons.getmany(timeout_ms=100)).values():
                now = loop.time()
                lat.extend(now - sent.pop(m.key) for m in msgs if m.key in sent)

    rows = []
    for step in range(steps + 1):
        await follow(time.monotonic() + 1.0)  # catch up with the bulk records
        lat.clear()
        at = records
        both = await _window(broker, 6.0, trickle, follow)
        a = np.array(lat) * 1000
        produce_only = await _window(broker, 3.0, trickle, None)
        await follow(time.monotonic() + 1.0)
        consume_only = await _window(broker, 3.0, None, follow)
        rows.append({"log_records": at, "log_mb": round(at * len(payload) / 1e6, 1),
                     "broker_rss_mb": _rss_mb(broker),
                     "broker_cores_trickle_and_tail": round(both, 3),
                     "broker_cores_produce_only": round(produce_only, 3),
                     "broker_cores_idle_tail_only": round(consume_only, 3),
                     "latency_ms_p50": round(float(np.percentile(a, 50)), 1) if len(a) else None,
                     "latency_ms_p99": round(float(np.percentile(a, 99)), 1) if len(a) else None})
        print(json.dumps(rows[-1]), flush=True)
        sent.clear()
        if step < steps:
            futs = [await prod.send(TOPIC, payload, key=f"bulk-{j % 1000}".encode()) for j in range(bulk)]
            await asyncio.gather(*futs)
            records += bulk
    await cons.stop()
    await prod.stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--payload", type=int, default=16303, help="record bytes (a 2 s, 12-lead segment: 16,303)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--bulk", type=int, default=8000, help="records added between measurements")
    ap.add_argument("--partitions", type=int, default=8)
    args = ap.parse_args()
    with EmbeddedBroker() as broker:
        rows = asyncio.run(run(broker, os.urandom(args.payload), args.steps, args.bulk, args.partitions))
    print(json.dumps({"payload_bytes": args.payload, "partitions": args.partitions, "rows": rows}))


if __name__ == "__main__":
    main()
