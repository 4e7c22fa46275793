"""A burst of condition changes beside running streams: how fast one worker applies events.

An alarm-algorithm stress test switches a whole ward at once ("every patient to AFIB at t=60 s"),
and a worker restart onboards thousands of patients in one go. Here one worker serves
``--patients`` real-time streams, then one condition change per patient is sent at once.
Printed, as JSON: how long the registrations took to become live streams, and, from the burst,
when each change was applied (read by the service, durable by its commit) and when its first
segment went out (p50, p99, last), with the deadline misses.

    .venv/bin/python bench/event_burst.py [--patients 1000] [--generator null|model]

A check started by hand (about a minute per run), not a test; results in docs/BENCHMARKS.md.
To compare revisions, run it with PYTHONPATH=<a worktree of the other revision>.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import time
import uuid

import numpy as np

from models.conditions import CardiacState
from stream.events import Event
from stream.kafka.embedded import EmbeddedBroker
from twin_engine.config import load_settings
from twin_engine.ops.app import load_model
from twin_engine.ops.bench import null_generate
from twin_engine.worker.service import TwinService


async def burst(bootstrap: str, patients: int, null: bool, settle_s: float) -> dict:
    settings = load_settings(env={}, speed=1.0)
    settings.kafka.bootstrap_servers = bootstrap
    settings.kafka = settings.kafka.namespaced(f"burst{uuid.uuid4().hex[:6]}")
    model = load_model(settings)
    gen = functools.partial(null_generate, leads=len(model.meta.leads)) if null else None
    svc = TwinService(settings, model, generate=gen)
    await svc.start()
    await asyncio.wait_for(svc.ready.wait(), 60)
    base = (np.ones(model.ibe.cfg.base_dim, np.float32) / np.sqrt(model.ibe.cfg.base_dim)).tolist()
    pids = [f"p{i:05d}" for i in range(patients)]
    t = time.monotonic()
    await svc.send_events(Event(f"reg-{pid}", pid, "register", CardiacState(), reference={"base_vector": base})
                          for pid in pids)
    while len(svc.streams) < patients:
        await asyncio.sleep(0.05)
    live_s = time.monotonic() - t
    await asyncio.sleep(settle_s)
    misses_before = svc.metrics.registry.get_sample_value("twin_deadline_misses_total")
    t0 = time.monotonic()
    await svc.send_events(Event(f"afib-{pid}", pid, "condition", CardiacState({"AFIB": 1.0}, 110)) for pid in pids)

    def changes() -> list:
        return [svc.streams[pid].change for pid in pids]

    while not all(c is not None and c.event_id == f"afib-{pid}" and c.published is not None
                  for pid, c in zip(pids, changes(), strict=True)):
        if time.monotonic() - t0 > 120:
            raise TimeoutError("the burst was not applied within 120 s")
        await asyncio.sleep(0.05)
    applied = np.array([c.received - t0 for c in changes()])
    published = np.array([c.published - t0 for c in changes()])
    misses = svc.metrics.registry.get_sample_value("twin_deadline_misses_total") - misses_before
    await svc.stop()
    return {"patients": patients, "generator": "null" if null else "model", "live_after_registration_s": live_s,
            "applied_p50_s": float(np.percentile(applied, 50)), "applied_last_s": float(applied.max()),
            "effect_p50_s": float(np.percentile(published, 50)), "effect_p99_s": float(np.percentile(published, 99)),
            "effect_last_s": float(published.max()), "deadline_misses_during_burst": misses}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--generator", choices=["null", "model"], default="null",
                    help="null: instant flat segments, so the figures are the service's own")
    ap.add_argument("--settle", type=float, default=6.0, help="seconds of streaming before the burst")
    args = ap.parse_args()
    broker = EmbeddedBroker().start()
    try:
        r = asyncio.run(burst(broker.bootstrap_servers, args.patients, args.generator == "null", args.settle))
    finally:
        broker.stop()
    r["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
