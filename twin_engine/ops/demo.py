"""``twin-engine demo``: embedded broker, the engine, a scenario, dashboard and metrics, all local.

The scenario onboards patients from held-out PTB-XL records (their own stated condition as the
starting state) and then, every ``every`` seconds, moves one of them to another state, the way
a simulated ICU feed would.
"""

from __future__ import annotations

import asyncio
import logging
import random

from models.conditions import CardiacState
from models.data.ptbxl import PTBXL
from models.rpeaks import heart_rate
from stream.events import Event, new_event_id
from twin_engine.config import Settings
from twin_engine.ops.app import run_app
from twin_engine.worker.service import TwinService

log = logging.getLogger(__name__)

SCENARIO_STATES = [
    CardiacState({"AFIB": 1.0}, 118),
    CardiacState({"SR": 1.0, "STACH": 1.0}, 125),
    CardiacState({"SR": 1.0, "SBRAD": 1.0}, 46),
    CardiacState({"SR": 1.0, "PVC": 1.0}, 78),
    CardiacState({"NORM": 1.0, "SR": 1.0}, 70),
]


def demo_patients(settings: Settings, n: int) -> list[tuple[str, str, CardiacState]]:
    db = PTBXL(settings.data_dir / "ptbxl-subset", 250)
    _, held = db.split()
    out = []
    for i, ecg_id in enumerate(held[:n]):
        rec = db.record(ecg_id)
        hr = heart_rate(rec.signal, rec.fs)
        state = CardiacState.from_scp(rec.scp_codes, hr if hr == hr else 70.0, rec.age, rec.sex)
        out.append((f"bed-{i + 1:02d}", f"ptbxl-subset/{db.df.at[ecg_id, db.filename_column]}", state))
    return out


def make_scenario(settings: Settings, patients: int, every: float = 15.0, seed: int = 0):
    async def scenario(service: TwinService) -> None:
        rng = random.Random(seed)
        beds = demo_patients(settings, patients)
        for pid, path, state in beds:
            await service.send_event(Event(new_event_id(), pid, "register", state, reference={"wfdb": path}))
        print(f"demo: onboarded {len(beds)} patients; a state change every {every:.0f} s", flush=True)
        while True:
            await asyncio.sleep(every)
            pid = rng.choice(beds)[0]
            state = rng.choice(SCENARIO_STATES)
            await service.send_event(Event(new_event_id(), pid, "condition", state))
            print(f"demo: {pid} -> {'+'.join(state.statements)} {state.heart_rate:.0f} bpm", flush=True)

    return scenario


# broker memory a patient's segments take on the embedded broker per hour: 8.15 kB/s of segment
# JSON at 250 Hz, held at about 1.6x (measured, docs/BENCHMARKS.md "The embedded broker slows")
EMBEDDED_MB_PER_PATIENT_HOUR = 47


def run_demo(settings: Settings, duration: float = 0, patients: int = 8) -> int:
    from twin_engine.ops.doctor import print_report

    print_report(settings)
    print()
    if not settings.kafka.bootstrap_servers:
        print(f"note: the embedded broker keeps every record in memory, about "
              f"{patients * EMBEDDED_MB_PER_PATIENT_HOUR} MB an hour for {patients} patients; for long runs set "
              f"kafka.bootstrap_servers to an Apache Kafka (deploy/)", flush=True)
    return run_app(settings, make_scenario(settings, patients), duration)
