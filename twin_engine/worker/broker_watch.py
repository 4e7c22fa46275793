"""Noticing a broker that lost its state while this worker runs.

A memory-only broker restarted (or topics deleted and auto-created again) answers as if nothing
happened: the worker rejoined with "0 patients restored" and stayed ready. The watch compares,
every few seconds, what the broker says with what it acknowledged to this worker: the topics'
partition counts against the configuration, and the last registry record acknowledged on each
partition, read back. Either off twice in a row: the broker lost data.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from stream.kafka.topics import TopicSpec
from twin_engine.registry import Registry

log = logging.getLogger(__name__)


async def check_topics(admin: AIOKafkaAdminClient, topics: list[TopicSpec]) -> str | None:
    """Why the broker's topics are not the deployment's (None: they are). Asked of the broker
    each time: a consumer's ``partitions_for_topic`` answers from its cached metadata, which
    holds only the topics it reads (the watch reported every other topic gone after 10 s)."""
    names = set(await admin.list_topics())
    present = [t for t in topics if t.name in names]
    for t in topics:
        if t.name not in names:
            return f"topic {t.name} is gone"
    described = await admin.describe_topics([t.name for t in present])
    counts = {d.get("topic"): len(d.get("partitions") or []) for d in described}
    for t in present:
        if counts.get(t.name) and counts[t.name] != t.partitions:
            return f"topic {t.name} has {counts[t.name]} partitions, the deployment {t.partitions}"
    return None


async def check_registry(consumer: AIOKafkaConsumer, registry: Registry, timeout_ms: int = 2000) -> str | None:
    """Why the registry changelog no longer holds the last record the broker acknowledged to
    this worker on each partition (None: it does, or the fetch did not answer in time). Read
    back, not compared with end offsets: Tansu reports a partition's end as one past its last
    batch's first offset (2 after 101 records sent as two batches), below records it holds."""
    acked = dict(registry.acked_offsets)
    if not acked:
        return None
    tps = {TopicPartition(registry.topic, p): off for p, off in acked.items()}
    if consumer.assignment() != set(tps):  # aiokafka logs every assign at INFO: 12 lines a minute
        consumer.assign(list(tps))
    for tp, off in tps.items():
        consumer.seek(tp, off)
    found: set[TopicPartition] = set()
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_ms / 1000
    while len(found) < len(tps) and loop.time() < end:
        batch = await consumer.getmany(*[tp for tp in tps if tp not in found], timeout_ms=200)
        for tp, msgs in batch.items():
            if any(m.offset == tps[tp] for m in msgs) or (msgs and msgs[0].offset > tps[tp]):
                found.add(tp)  # (past it: compacted away, as Kafka may)
    missing = sorted(tp.partition for tp in tps if tp not in found)
    if missing:
        return (f"registry partitions {missing} no longer hold the records the broker acknowledged at offsets "
                f"{[acked[p] for p in missing]}")
    return None


class BrokerWatch:
    """Checks every ``interval`` seconds; calls ``on_lost(reason)`` once the broker lost state."""

    def __init__(self, kafka_kwargs: dict, topics: list[TopicSpec], registry: Registry, interval: float,
                 on_lost: Callable[[str], None]) -> None:
        self.kafka_kwargs, self.topics, self.registry = kafka_kwargs, topics, registry
        self.interval, self.on_lost = interval, on_lost
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="broker-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        # small fetches: the check reads one record a partition, not the changelog
        consumer = AIOKafkaConsumer(enable_auto_commit=False, max_partition_fetch_bytes=64 * 1024,
                                    fetch_max_wait_ms=100, **self.kafka_kwargs)
        admin = AIOKafkaAdminClient(**self.kafka_kwargs)
        await consumer.start()
        await admin.start()
        strikes = 0  # two checks in a row must fail: one fetch may be slow on a loaded host
        try:
            while True:
                await asyncio.sleep(self.interval)
                try:
                    why = await check_topics(admin, self.topics) or await check_registry(consumer, self.registry)
                except KafkaError as exc:  # unreachable: the clients' own retries and errors say so
                    log.debug("broker check failed: %s", exc)
                    continue
                strikes = strikes + 1 if why is not None else 0
                if strikes >= 2:
                    self.on_lost(why)
                    return
        finally:
            await consumer.stop()
            await admin.close()
