"""Noticing a broker that lost its state while this worker runs.

A memory-only broker restarted (or topics deleted and auto-created again) answers as if nothing
happened: the worker rejoined with "0 patients restored" and stayed ready. The watch compares,
every few seconds, what the broker says with what it acknowledged to this worker: the topics'
partition counts against the configuration, and the registry changelog's end offsets against
the highest offsets it acknowledged. Either off: the broker lost data.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from twin_engine.broker import TopicSpec
from twin_engine.registry import Registry

log = logging.getLogger(__name__)


async def check_topics(consumer: AIOKafkaConsumer, topics: list[TopicSpec]) -> str | None:
    """Why the broker's topics are not the deployment's (None: they are)."""
    await consumer.topics()  # a fresh metadata request
    for t in topics:
        have = consumer.partitions_for_topic(t.name)
        if not have:
            return f"topic {t.name} is gone"
        if len(have) != t.partitions:
            return f"topic {t.name} has {len(have)} partitions, the deployment {t.partitions}"
    return None


async def check_registry(consumer: AIOKafkaConsumer, registry: Registry) -> str | None:
    """Why the registry changelog is behind what the broker acknowledged (None: it is not)."""
    acked = dict(registry.acked_offsets)
    if not acked:
        return None
    tps = [TopicPartition(registry.topic, p) for p in acked]
    ends = await consumer.end_offsets(tps)
    behind = sorted(tp.partition for tp in tps if ends.get(tp, 0) <= acked[tp.partition])
    if behind:
        return (f"registry partitions {behind} end before records the broker acknowledged "
                f"(end offsets {[ends[TopicPartition(registry.topic, p)] for p in behind]})")
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
        consumer = AIOKafkaConsumer(enable_auto_commit=False, **self.kafka_kwargs)
        await consumer.start()
        try:
            while True:
                await asyncio.sleep(self.interval)
                try:
                    why = await check_topics(consumer, self.topics) or await check_registry(consumer, self.registry)
                except KafkaError as exc:  # unreachable: the clients' own retries and errors say so
                    log.debug("broker check failed: %s", exc)
                    continue
                if why is not None:
                    self.on_lost(why)
                    return
        finally:
            await consumer.stop()
