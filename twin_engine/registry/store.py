"""The registry: the patients this worker owns, written through to a compacted Kafka changelog.

Durability is the changelog (``kafka.topic_registry``) keyed by patient id with the same
partition count as the events topic. Kafka's default partitioner sends a patient's events and
its registry record to the same partition number, so the worker that owns a patient's event
partition rebuilds exactly that patient's state from the changelog: state follows its partition,
as in a faust Table, without faust's own worker runtime (the engine already owns the event loop,
the HTTP server and the accelerator; one more framework would add a second scheduler).

Sequence number, stream origin and the samples the next segment continues are all a restart
needs, so the per-segment position record carries only those (about half the bytes of the whole
record; base vector and state history stay put). ``changelog`` reads both kinds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream.kafka.producer import QueuedProducer
from stream.kafka.producer import partition_of as key_partition
from twin_engine.registry.changelog import apply_record, position_key
from twin_engine.registry.patient import Patient

log = logging.getLogger(__name__)
STALL_S = 15.0  # a restore that reads nothing for this long gives up the try


class BrokerStateLost(RuntimeError):
    """The broker no longer has records it acknowledged (restarted without its storage, topics
    recreated): restoring from it would silently start with fewer patients."""


def partition_of(patient_id: str, partitions: int) -> int:
    """Where the patient's records live: Kafka's default partitioner of its id."""
    return key_partition(patient_id.encode(), partitions)


class Registry:
    """In-memory view of the patients this worker owns, written through to the changelog."""

    def __init__(self, producer: QueuedProducer | AIOKafkaProducer | None, topic: str, partitions: int) -> None:
        self.producer = producer
        self.topic = topic
        self.partitions = partitions
        self.patients: dict[str, Patient] = {}
        # the highest changelog offset the broker acknowledged per partition: a broker that no
        # longer holds a record there lost records it had taken (a memory-only broker restarted;
        # read back by restore and the broker watch)
        self.acked_offsets: dict[int, int] = {}

    def _acked(self, metadata: Any) -> None:
        if metadata is not None and getattr(metadata, "offset", None) is not None:
            part = metadata.partition
            self.acked_offsets[part] = max(self.acked_offsets.get(part, -1), metadata.offset)

    def __contains__(self, pid: str) -> bool:
        return pid in self.patients

    def __len__(self) -> int:
        return len(self.patients)

    def get(self, pid: str) -> Patient | None:
        return self.patients.get(pid)

    async def stage(self, p: Patient) -> asyncio.Future:
        """Queue the patient's record and return its delivery, so that the records of a whole
        batch of events share broker round trips: durable once the returned future is done
        (records of one patient keep their order: one key, one partition)."""
        self.patients[p.patient_id] = p
        if self.producer is None:
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        future = await self.producer.send(self.topic, p.to_json(), key=p.patient_id.encode())
        future.add_done_callback(lambda f: self._acked(f.result()) if not f.cancelled() and f.exception() is None
                                 else None)
        return future

    async def put_position(self, p: Patient) -> None:
        """Durable once this returns: the broker acknowledged the stream-position record."""
        position = p.position()
        if self.producer is not None:
            self._acked(await self.producer.send_and_wait(
                self.topic, p.position_json(), key=position_key(p.patient_id),
                partition=partition_of(p.patient_id, self.partitions)))
        p.acknowledge(position)

    async def delete(self, pid: str) -> None:
        """Durable once this returns; the patient stays known until then, so that a failed
        delete is applied again when its event is."""
        if self.producer is not None:
            await self.producer.send_and_wait(self.topic, None, key=pid.encode())
            await self.producer.send_and_wait(self.topic, None, key=position_key(pid),
                                              partition=partition_of(pid, self.partitions))
        self.patients.pop(pid, None)

    def drop_partitions(self, partitions: set[int]) -> list[str]:
        """Forget patients of revoked partitions (their new owner rebuilds them)."""
        gone = [pid for pid in self.patients if partition_of(pid, self.partitions) in partitions]
        for pid in gone:
            del self.patients[pid]
        return gone

    async def restore(self, kafka_kwargs: dict, partitions: list[int]) -> list[str]:
        """Replay the changelog partitions to their end; returns the patients restored."""
        if not partitions:
            return []
        consumer = AIOKafkaConsumer(enable_auto_commit=False, **kafka_kwargs)
        await consumer.start()
        restored: dict[str, Patient | None] = {}
        try:
            tps = [TopicPartition(self.topic, p) for p in partitions]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            last = {tp: -1 for tp in tps}  # the last offset read per partition
            remaining = {tp for tp in tps if ends[tp] > 0}
            total, read, reported = sum(ends.values()), 0, time.monotonic()
            progress = time.monotonic()
            while remaining:
                batch = await consumer.getmany(*remaining, timeout_ms=1000)
                n = sum(len(msgs) for msgs in batch.values())
                read += n
                if n:
                    progress = time.monotonic()
                elif time.monotonic() - progress > STALL_S:
                    # an end offset the fetches never reach (seen on Tansu after a restart that
                    # lost its data): a failed try, not a wait for the whole deadline
                    raise TimeoutError(f"no registry records for {STALL_S:g} s at {read} of about {total}")
                if time.monotonic() - reported > 5:
                    reported = time.monotonic()
                    log.info("restoring partitions %s: %d of about %d registry records read", partitions, read, total)
                for tp, msgs in batch.items():
                    if msgs:
                        last[tp] = msgs[-1].offset
                    for m in msgs:
                        try:
                            apply_record(restored, m.key, m.value)
                        except (ValueError, TypeError, AttributeError) as exc:
                            log.error("skipping unreadable registry record %s@%d: %s", m.key, m.offset, exc)
                    if msgs and msgs[-1].offset + 1 >= ends[tp]:
                        remaining.discard(tp)
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
        finally:
            await consumer.stop()
        # (not against ``ends``: Tansu reports a partition's end as one past its last batch's first offset)
        lost = [tp.partition for tp in tps if last[tp] < self.acked_offsets.get(tp.partition, -1)]
        if lost:
            raise BrokerStateLost(f"the registry changelog's partitions {lost} end before records the broker "
                                  "acknowledged to this worker: the broker lost its data")
        for pid, p in restored.items():
            if p is None:
                self.patients.pop(pid, None)
            else:
                self.patients[pid] = p
        return [pid for pid, p in restored.items() if p is not None]
