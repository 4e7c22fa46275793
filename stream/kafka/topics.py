"""The deployment's topics: created where missing, with explicit partition counts, and checked."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The broker could not be found, started or reached, or its topics do not fit the
    deployment; the message says why (the CLI prints it and exits, no traceback)."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    compacted: bool = False


async def ensure_topics(kafka_kwargs: dict, topics: Iterable[TopicSpec], replication: int = 1,
                        connect_timeout: float = 0.0) -> None:
    """Create the topics that do not exist yet, with explicit partition counts.

    Args:
        connect_timeout: seconds to keep trying a broker that does not answer, with back-off.
    Raises:
        BrokerError: no broker answered in time, or an existing topic has another partition
            count than the deployment's (a patient's events and registry would not meet).
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaConnectionError, KafkaError

    topics = list(topics)
    deadline, wait = time.monotonic() + connect_timeout, 0.5
    while True:
        admin = AIOKafkaAdminClient(**kafka_kwargs)
        try:
            await admin.start()
            break
        except (KafkaConnectionError, OSError) as exc:
            await admin.close()
            if time.monotonic() + wait > deadline:
                raise BrokerError(f"no Kafka broker answered at {kafka_kwargs.get('bootstrap_servers')} "
                                  f"within {connect_timeout:g} s ({exc.__class__.__name__})") from exc
            log.warning("Kafka at %s does not answer yet; trying again in %.1f s",
                        kafka_kwargs.get("bootstrap_servers"), wait)
            await asyncio.sleep(wait)
            wait = min(wait * 2, 10.0)
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(
                name=t.name,
                num_partitions=t.partitions,
                replication_factor=replication,
                topic_configs={"cleanup.policy": "compact"} if t.compacted else {},
            )
            for t in topics
            if t.name not in existing
        ]
        if new:
            await admin.create_topics(new)
        have = [t for t in topics if t.name in existing]
        if have:
            try:
                described = await admin.describe_topics([t.name for t in have])
            except KafkaError as exc:  # pragma: no cover - brokers without DescribeTopics
                log.warning("could not check the topics' partition counts: %s", exc)
                described = []
            counts = {d.get("topic"): len(d.get("partitions") or []) for d in described}
            for t in have:
                if counts.get(t.name) and counts[t.name] != t.partitions:
                    raise BrokerError(f"topic {t.name} has {counts[t.name]} partitions, the configuration "
                                      f"{t.partitions} (kafka.partitions): a patient's events and registry records "
                                      "would not meet on one worker")
    finally:
        await admin.close()


async def read_topic(kafka_kwargs: dict, topic: str, idle_ms: int = 1500) -> list:
    """Every record of ``topic`` from its beginning, until a fetch waits ``idle_ms`` for none
    (tests and benchmarks read what a run published).

    Returns:
        aiokafka ``ConsumerRecord``s, partition by partition in offset order.
    """
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(topic, auto_offset_reset="earliest", enable_auto_commit=False, **kafka_kwargs)
    await c.start()
    out: list = []
    try:
        while batch := await c.getmany(timeout_ms=idle_ms):
            for msgs in batch.values():
                out.extend(msgs)
    finally:
        await c.stop()
    return out
