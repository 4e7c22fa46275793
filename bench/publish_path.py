"""What publishing a segment costs the service process: encoding it and handing it to aiokafka.

On a GPU the model makes tens of thousands of segments a second, and one Python worker has to
encode and produce each of them. This measures that path on its own against the embedded broker:
the service's configuration (samples spliced into the JSON, 512 kB producer batches) and the
plain one it replaced (``json.dumps`` of the whole value, aiokafka's 16 kB default batch), in
alternating rounds, medians of each. Figures, not pass/fail; results in docs/BENCHMARKS.md.

    .venv/bin/python bench/publish_path.py [--seconds 2] [--n 4000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import numpy as np
from aiokafka import AIOKafkaProducer

from stream.kafka.embedded import EmbeddedBroker
from stream.kafka.topics import TopicSpec, ensure_topics
from stream.segments import Segment

LEADS = ("I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")
CONFIGS = {  # name -> (encoder, producer max_batch_size)
    "service": (lambda seg: seg.to_json(), 512 * 1024),
    "plain": (lambda seg: json.dumps(seg.to_dict()).encode(), 16384),
}


async def _round(bs: str, topic: str, samples: np.ndarray, n: int, name: str) -> dict:
    encode, batch = CONFIGS[name]
    prod = AIOKafkaProducer(bootstrap_servers=bs, acks="all", linger_ms=0, max_batch_size=batch)
    await prod.start()
    futs = []
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(n):
        seg = Segment(f"p{i % 1000:05d}", i, 0.0, 250, LEADS, samples, {"statements": {"SR": 1.0}}, None, "m")
        futs.append(await prod.send(topic, encode(seg), key=seg.patient_id.encode()))
    await asyncio.gather(*futs)
    out = {"segments_per_s": n / (time.perf_counter() - t0), "cpu_us_per_segment": (time.process_time() - c0) / n * 1e6}
    await prod.stop()
    return out


async def run(bs: str, seconds: float, n: int, rounds: int) -> dict:
    topic = "publish.segments"
    await ensure_topics({"bootstrap_servers": bs}, [TopicSpec(topic, 8)])
    samples = np.random.default_rng(0).standard_normal((int(250 * seconds), 12)).astype(np.float32)
    res: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    for _ in range(rounds):
        for name in CONFIGS:
            res[name].append(await _round(bs, topic, samples, n, name))
    value_bytes = len(CONFIGS["service"][0](Segment("p00000", 0, 0.0, 250, LEADS, samples, {}, None, "m")))
    summary = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in res.items()}
    return {"segment_seconds": seconds, "value_bytes": value_bytes, "n": n, "rounds": rounds,
            "median": summary, "runs": res,
            "cpu_ratio_plain_vs_service": summary["plain"]["cpu_us_per_segment"] / summary["service"]["cpu_us_per_segment"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="segment length")
    ap.add_argument("--n", type=int, default=4000, help="segments per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with EmbeddedBroker() as broker:
        out = asyncio.run(run(broker.bootstrap_servers, args.seconds, args.n, args.rounds))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
