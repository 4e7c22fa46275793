"""The service through a broker outage: the embedded broker is paused (SIGSTOP) for longer than
the Kafka clients' request timeout, then resumed, while the default model twins a few patients in
real time. Prints, per patient, the next sequence number before the pause, on resuming and
after catching up, whether every stream is still running, how many publications failed and were
retried, how soon a condition change sent after the outage took effect, and whether the segments
topic holds every sequence number.

    .venv/bin/python bench/broker_pause.py [--patients 4] [--pause 50] [--after 20]

A check started by hand (it takes about two minutes), not a test; results in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import time
from pathlib import Path

from models.conditions import CardiacState
from stream.events import Event
from stream.kafka.embedded import EmbeddedBroker
from stream.kafka.topics import read_topic
from stream.segments import decode_segment
from twin_engine.config import load_settings
from twin_engine.ops.app import load_model
from twin_engine.ops.demo import demo_patients
from twin_engine.worker.service import TwinService


def _seqs(svc: TwinService) -> dict[str, int]:
    return {pid: s.p.next_seq for pid, s in sorted(svc.streams.items())}


async def run(broker: EmbeddedBroker, patients: int, pause: float, after: float) -> dict:
    settings = load_settings(env={}, speed=1.0)
    settings.kafka.bootstrap_servers = broker.bootstrap_servers
    svc = TwinService(settings, load_model(settings))
    await svc.start()
    await asyncio.wait_for(svc.ready.wait(), 60)
    for pid, path, state in demo_patients(settings, patients):
        await svc.send_event(Event(f"reg-{pid}", pid, "register", state, reference={"wfdb": path}))
    while len(svc.streams) < patients or min(_seqs(svc).values()) < 3:
        await asyncio.sleep(0.2)
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "patients": patients, "pause_s": pause,
           "before": _seqs(svc)}
    os.kill(broker.pid, signal.SIGSTOP)
    await asyncio.sleep(pause)
    os.kill(broker.pid, signal.SIGCONT)
    out["on_resume"] = _seqs(svc)
    # the consumer came back too: a condition change sent now takes effect
    target = next(iter(svc.streams))
    t0 = time.monotonic()
    await svc.send_event(Event("after-pause", target, "condition", CardiacState({"AFIB": 1.0}, 120)))
    while time.monotonic() - t0 < after and svc.registry.get(target).state_event_id != "after-pause":
        await asyncio.sleep(0.1)
    out["event_after_resume_applied_s"] = (round(time.monotonic() - t0, 2)
                                           if svc.registry.get(target).state_event_id == "after-pause" else None)
    await asyncio.sleep(max(0.0, after - (time.monotonic() - t0)))
    out["after"] = _seqs(svc)
    out["streams_running"] = all(not s.task.done() for s in svc.streams.values())
    out["publish_failures"] = svc.metrics.registry.get_sample_value("twin_publish_failures_total")
    out["deadline_misses"] = svc.metrics.registry.get_sample_value("twin_deadline_misses_total")
    out["event_kafka_errors"] = svc.metrics.registry.get_sample_value("twin_event_kafka_errors_total")
    await svc.stop()
    final = _seqs(svc) or out["after"]
    segs = [decode_segment(m.value) for m in await read_topic({"bootstrap_servers": broker.bootstrap_servers}, settings.kafka.topic_segments)]
    out["final"] = final
    out["topic_complete"] = all(sorted({s.seq for s in segs if s.patient_id == pid}) == list(range(n))
                                for pid, n in final.items())
    out["segments_in_topic"] = len(segs)
    out["duplicates_in_topic"] = len(segs) - len({(s.patient_id, s.seq) for s in segs})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=4)
    ap.add_argument("--pause", type=float, default=50.0, help="seconds the broker is stopped (clients time out at 40)")
    ap.add_argument("--after", type=float, default=20.0, help="seconds watched after it resumes")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    broker = EmbeddedBroker().start()
    try:
        out = asyncio.run(run(broker, args.patients, args.pause, args.after))
    finally:
        broker.stop()
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
