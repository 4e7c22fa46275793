"""A Kafka producer whose sends wait their turn per partition.

aiokafka keeps one open batch per partition. When it is full, every ``send`` for that partition
waits for it to drain; the drain wakes all of them, one or a few fit into the next batch and the
rest go back to sleep. A worker sends for hundreds of streams per partition, so each segment was
retried several times (with 10 s segments, 270,000 appends for 39,000 segments; that herd was
the largest part of the worker's own CPU in a profile). Here sends for one partition queue on a
lock instead, so a drain wakes one sender, in arrival order.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2


def partition_of(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2 of the key), as aiokafka applies it."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class QueuedProducer:
    """``send`` and ``send_and_wait`` of an ``AIOKafkaProducer``, one sender at a time per
    (topic, partition). ``partitions``: the topics' partition count, for keyed records sent
    without an explicit partition (they go where Kafka's default partitioner puts them)."""

    def __init__(self, producer: AIOKafkaProducer, partitions: int) -> None:
        self.producer = producer
        self.partitions = partitions
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def flush(self) -> None:
        await self.producer.flush()

    async def send(self, topic: str, value: bytes | None, key: bytes | None = None,
                   partition: int | None = None) -> asyncio.Future:
        """Queue the record; returns its delivery future (as ``AIOKafkaProducer.send``)."""
        slot = partition if partition is not None else partition_of(key, self.partitions) if key is not None else -1
        lock = self._locks.get((topic, slot))
        if lock is None:
            lock = self._locks[(topic, slot)] = asyncio.Lock()
        async with lock:
            return await self.producer.send(topic, value, key=key, partition=partition)

    async def send_and_wait(self, topic: str, value: bytes | None, key: bytes | None = None,
                            partition: int | None = None):
        return await (await self.send(topic, value, key=key, partition=partition))


def is_final(exc: BaseException) -> bool:
    """Whether retrying cannot fix this Kafka error: a record too large for the broker, or a
    credential the broker refuses. Such an error is not "the broker is unreachable" (a retry
    loop on it stalled a partition for good)."""
    from aiokafka import errors

    final = (errors.MessageSizeTooLargeError, errors.RecordListTooLargeError, errors.InvalidTopicError,
             errors.TopicAuthorizationFailedError, errors.ClusterAuthorizationFailedError,
             errors.GroupAuthorizationFailedError, errors.TransactionalIdAuthorizationFailed,
             errors.SaslAuthenticationFailed, errors.AuthenticationFailedError,
             errors.UnsupportedSaslMechanismError)
    return isinstance(exc, final)
