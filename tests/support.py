"""Helpers the service, dashboard, metrics and process tests share: settings on the test broker,
reading a topic back, waiting for a condition, and a service with its dashboard."""

from __future__ import annotations

import asyncio
import uuid

from models.conditions import CardiacState
from models.twin import TwinModel
from stream.events import Event
from stream.kafka.embedded import free_port
from stream.kafka.topics import read_topic
from stream.subscribers import SubscriberHub
from twin_engine.config import load_settings
from twin_engine.metrics import Metrics
from twin_engine.web.dashboard import page_hello
from twin_engine.web.http_api import serve_http
from twin_engine.worker.service import TwinService

RECORDS = ["ptbxl-subset/records250/00000/00024_250", "ptbxl-subset/records250/00000/00043_250",
           "ptbxl-subset/records250/00000/00055_250"]


def mitdb_minute(data_dir, record: str = "100"):
    """The first minute of a shared MIT-BIH record: (samples (n, 2) in mV, its normal beats'
    sample indices, fs)."""
    import numpy as np
    import wfdb

    path = str(data_dir / "mitdb" / record)
    rec = wfdb.rdrecord(path, sampto=360 * 60)
    ann = wfdb.rdann(path, "atr", sampto=360 * 60)
    beats = np.array([s for s, sym in zip(ann.sample, ann.symbol, strict=True) if sym == "N"])
    return rec.p_signal, beats, float(rec.fs)


def service_settings(broker, prefix: str, **kw):
    """Settings on the test broker; the rhythm layer off unless asked for (the tiny model's
    windows have no beats to draw: its streams would ask for a bank first, then fall back)."""
    s = load_settings(env={}, speed=kw.pop("speed", 10.0), segment_seconds=1.0,
                      rhythm_layer=kw.pop("rhythm_layer", False), **kw)
    s.kafka = s.kafka.namespaced(prefix)
    s.kafka.bootstrap_servers, s.kafka.partitions = broker.bootstrap_servers, 4
    return s


def one_patient_per_partition(partitions: int) -> list[str]:
    """Patient ids ``bed-N``, one on each partition (so that every worker of a group has some)."""
    from twin_engine.registry import partition_of

    by_partition: dict[int, str] = {}
    i = 0
    while len(by_partition) < partitions:
        by_partition.setdefault(partition_of(f"bed-{i}", partitions), f"bed-{i}")
        i += 1
    return [by_partition[p] for p in range(partitions)]


async def read_all(bs: str, topic: str, timeout_ms: int = 1500) -> list:
    return await read_topic({"bootstrap_servers": bs}, topic, timeout_ms)


async def wait_for(cond, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def start_with_dashboard(broker, tiny_model_dir, data_dir, speed=1.0, patients=2):
    prefix = f"d{uuid.uuid4().hex[:8]}"
    settings = service_settings(broker, prefix, data_dir=data_dir, speed=speed)
    settings.http_port = free_port()
    metrics = Metrics()
    model = TwinModel.load(tiny_model_dir)
    hub = SubscriberHub(queue_frames=16, metrics=metrics, hello=page_hello(settings, model.meta.vocab))
    svc = TwinService(settings, model, sinks=[hub], metrics=metrics)
    await svc.start()
    runner = await serve_http(svc, "127.0.0.1", settings.http_port, hub)
    await asyncio.wait_for(svc.ready.wait(), 30)
    for i in range(patients):
        await svc.send_event(Event(f"reg-{i}", f"bed-{i}", "register", CardiacState(),
                                   reference={"wfdb": RECORDS[i % len(RECORDS)]}))
    await wait_for(lambda: len(svc.streams) == patients)
    return svc, hub, runner, settings
