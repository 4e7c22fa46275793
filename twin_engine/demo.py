"""``twin-engine demo``: everything local, on the embedded broker."""

from __future__ import annotations

import time

from twin_engine.broker import EmbeddedBroker
from twin_engine.config import Settings
from twin_engine.doctor import print_report


def run_demo(settings: Settings, duration: float = 0, patients: int = 8) -> int:
    print_report(settings)
    with EmbeddedBroker() as broker:
        print(f"\nembedded Kafka broker on {broker.bootstrap_servers}")
        end = time.monotonic() + duration if duration else float("inf")
        try:
            while time.monotonic() < end:
                time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        except KeyboardInterrupt:
            pass
    return 0
