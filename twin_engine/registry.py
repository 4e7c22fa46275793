"""Patients the engine twins: base vector, model version, state, state history, stream position.

Durability is a compacted Kafka changelog (``kafka.topic_registry``) keyed by patient id with the
same partition count as the events topic. Kafka's default partitioner sends a patient's events
and its registry record to the same partition number, so the worker that owns a patient's event
partition rebuilds exactly that patient's state from the changelog: state follows its partition,
as in a faust Table, without faust's own worker runtime (the engine already owns the event loop,
the HTTP server and the accelerator; one more framework would add a second scheduler).
A tombstone (null value) removes a patient.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from models.conditions import CardiacState
from stream.events import state_from_dict, state_to_dict

log = logging.getLogger(__name__)
HISTORY_LIMIT = 50
SEEN_EVENTS_LIMIT = 256


@dataclass
class Patient:
    patient_id: str
    base_vector: list[float]
    model_version: str
    state: dict[str, Any]
    state_event_id: str | None = None
    state_since_seq: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # [{event_id, state, seq, time}]
    seen_events: list[str] = field(default_factory=list)
    next_seq: int = 0
    stream_start: float | None = None  # stream time of sample 0 (epoch seconds)
    published_event_id: str | None = None  # state of the last published segment ...
    published_state: dict[str, Any] | None = None
    published_since: float | None = None  # ... and the stream time it began
    tail_b64: str | None = None  # last samples published (int16, see stream.segments): continuity

    @property
    def cardiac_state(self) -> CardiacState:
        return state_from_dict(self.state)

    def base(self) -> np.ndarray:
        return np.asarray(self.base_vector, np.float32)

    def saw(self, event_id: str) -> bool:
        return event_id in self.seen_events

    def remember(self, event_id: str) -> None:
        self.seen_events.append(event_id)
        del self.seen_events[:-SEEN_EVENTS_LIMIT]

    def set_state(self, state: CardiacState, event_id: str, seq: int, when: float) -> None:
        self.state = state_to_dict(state)
        self.state_event_id = event_id
        self.state_since_seq = seq
        self.history.append({"event_id": event_id, "state": self.state, "seq": seq, "time": when})
        del self.history[:-HISTORY_LIMIT]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @staticmethod
    def from_json(raw: bytes) -> Patient:
        return Patient(**json.loads(raw))


class Registry:
    """In-memory view of the patients this worker owns, written through to the changelog."""

    def __init__(self, producer: AIOKafkaProducer | None, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self.patients: dict[str, Patient] = {}

    def __contains__(self, pid: str) -> bool:
        return pid in self.patients

    def __len__(self) -> int:
        return len(self.patients)

    def get(self, pid: str) -> Patient | None:
        return self.patients.get(pid)

    async def put(self, p: Patient) -> None:
        """Durable once this returns: the broker acknowledged the changelog record."""
        self.patients[p.patient_id] = p
        if self.producer is not None:
            await self.producer.send_and_wait(self.topic, p.to_json(), key=p.patient_id.encode())

    async def delete(self, pid: str) -> None:
        self.patients.pop(pid, None)
        if self.producer is not None:
            await self.producer.send_and_wait(self.topic, None, key=pid.encode())

    def drop_partitions(self, partitions: set[int], partition_of) -> list[str]:
        """Forget patients of revoked partitions (their new owner rebuilds them)."""
        gone = [pid for pid in self.patients if partition_of(pid) in partitions]
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
            remaining = {tp for tp in tps if ends[tp] > 0}
            while remaining:
                batch = await consumer.getmany(*remaining, timeout_ms=1000)
                for tp, msgs in batch.items():
                    for m in msgs:
                        pid = m.key.decode()
                        try:
                            restored[pid] = Patient.from_json(m.value) if m.value is not None else None
                        except (ValueError, TypeError) as exc:
                            log.error("skipping unreadable registry record %s@%d: %s", pid, m.offset, exc)
                    if msgs and msgs[-1].offset + 1 >= ends[tp]:
                        remaining.discard(tp)
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
        finally:
            await consumer.stop()
        for pid, p in restored.items():
            if p is None:
                self.patients.pop(pid, None)
            else:
                self.patients[pid] = p
        return [pid for pid, p in restored.items() if p is not None]
