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
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2


def partition_of(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2 of the key), as aiokafka applies it."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class QueuedProducer:
    """``send`` and ``send_and_wait`` of an ``AIOKafkaProducer``, one sender at a time per
    (topic, partition).

    Args:
        partitions: the topics' partition count, for keyed records sent without an explicit
            partition (they go where Kafka's default partitioner puts them).
        client_kwargs: how to reach the brokers (``KafkaConfig.client_kwargs``).
        idempotence: "on", "off", or "auto": on where the brokers hand out producer ids,
            asked at ``start`` (which is why the aiokafka producer is made there).
        **producer_kwargs: the rest of ``AIOKafkaProducer``'s settings (acks, linger_ms, ...).
    """

    def __init__(self, partitions: int, client_kwargs: dict, idempotence: str = "off", **producer_kwargs) -> None:
        if idempotence not in ("on", "off", "auto"):
            raise ValueError(f"idempotence must be on, off or auto, not {idempotence!r}")
        self.partitions, self.client_kwargs, self.idempotence = partitions, client_kwargs, idempotence
        self.producer_kwargs = producer_kwargs
        self.idempotent: bool | None = None  # decided at start
        self._producer: AIOKafkaProducer | None = None
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("the producer is not started")
        return self._producer

    async def start(self) -> None:
        self.idempotent = self.idempotence == "on" or (
            self.idempotence == "auto" and await idempotence_supported(self.client_kwargs))
        self._producer = AIOKafkaProducer(enable_idempotence=self.idempotent, **self.client_kwargs,
                                          **self.producer_kwargs)
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def flush(self) -> None:
        if self._producer is not None:
            await self._producer.flush()

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


async def delivered(futures: Iterable[asyncio.Future]) -> None:
    """Wait for every delivery, then raise the first failure (each is retrieved: none is left
    to be logged as never retrieved)."""
    for outcome in await asyncio.gather(*futures, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome


async def send_events(producer, topic: str, events: Iterable) -> None:
    """Publish condition events keyed by patient (the partition that owns the patient) and wait
    once for all of them: many events share the broker round trips."""
    await delivered([await producer.send(topic, ev.to_json(), key=ev.patient_id.encode()) for ev in events])


async def idempotence_supported(kafka_kwargs: dict) -> bool:
    """Whether the brokers hand out producer ids (InitProducerId), which an idempotent producer
    needs: Apache Kafka does; Tansu 0.1 answers UnknownError, and a producer asking for
    idempotence there failed every send."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.protocol.transaction import InitProducerIdRequest

    client = AIOKafkaClient(**kafka_kwargs)
    await client.bootstrap()
    try:
        resp = await client.send(client.get_random_node(),
                                 InitProducerIdRequest(transactional_id=None, transaction_timeout_ms=60_000))
        return resp.error_code == 0
    finally:
        await client.close()
