"""Patients the engine twins: base vector, model version, state, state history, stream position.

Durability is a compacted Kafka changelog (``kafka.topic_registry``) keyed by patient id with the
same partition count as the events topic. Kafka's default partitioner sends a patient's events
and its registry record to the same partition number, so the worker that owns a patient's event
partition rebuilds exactly that patient's state from the changelog: state follows its partition,
as in a faust Table, without faust's own worker runtime (the engine already owns the event loop,
the HTTP server and the accelerator; one more framework would add a second scheduler).
A tombstone (null value) removes a patient.

Two kinds of record share the topic and the patient's partition: the patient (key: its id;
written on registration and on every state change) and its stream position (key: id +
``#position``; written for every published segment). Sequence number, stream origin and the
samples the next segment continues are all a restart needs, so the per-segment write carries
only those (about half the bytes of the whole record; base vector and state history stay put).
Replayed in offset order, a position updates the patient written before it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from models.conditions import CardiacState
from stream.events import json_value, state_from_dict, state_to_dict
from stream.kafka.producer import QueuedProducer
from stream.kafka.producer import partition_of as key_partition
from stream.segments import dumps_spliced

log = logging.getLogger(__name__)
# One policy for a patient's history: every change still to come is kept (a restored stream
# makes them all), at most SCHEDULED_LIMIT of them (about 180 bytes each, and the record is
# written whole on each change: this keeps it far below Kafka's 1 MB); the changes already in
# effect are trimmed down to HISTORY_LIMIT entries.
HISTORY_LIMIT = 50
SCHEDULED_LIMIT = 500
STALL_S = 15.0  # a restore that reads nothing for this long gives up the try
SEEN_EVENTS_LIMIT = 256
POSITION_SUFFIX = "#position"  # '#' is not allowed in patient ids (stream.events)
POSITION_FIELDS = ("next_seq", "stream_start", "published_event_id", "published_state", "published_since",
                   "tail_b64", "segment_seconds")


class BrokerStateLost(RuntimeError):
    """The broker no longer has records it acknowledged (restarted without its storage, topics
    recreated): restoring from it would silently start with fewer patients."""


def change_at(entry: dict[str, Any]) -> float:
    """The stream time a history entry holds from (-inf: from the stream's start)."""
    return entry.get("at", float("-inf"))


def partition_of(patient_id: str, partitions: int) -> int:
    """Where the patient's records live: Kafka's default partitioner of its id."""
    return key_partition(patient_id.encode(), partitions)


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
    segment_seconds: float | None = None  # the segment length ``next_seq`` counts in
    published_event_id: str | None = None  # state of the last published segment ...
    published_state: dict[str, Any] | None = None
    published_since: float | None = None  # ... and the stream time it began
    tail_b64: str | None = None  # last samples published (int16, see stream.segments): continuity
    remove_at: float | None = None  # stream time of a scheduled removal (a remove event's effective_time)
    remove_event_id: str | None = None
    # the ``TwinModel.encoder_id`` its base vector came from ("" in records written before it
    # was kept): a model with another one would stream someone else
    encoder_id: str = ""

    def __post_init__(self) -> None:
        # the stream position the broker has acknowledged: what ``to_json`` writes, so that a
        # patient record written while a segment is in flight never carries a position past it
        # (killed then, a restart resumed after a segment that never went out: a gap)
        self._acked = self.position()

    def acknowledge(self, position: dict[str, Any]) -> None:
        """``position`` (from ``position()``) is durable: the broker took its record."""
        self._acked = dict(position)

    @property
    def cardiac_state(self) -> CardiacState:
        return state_from_dict(self.state)

    def base(self) -> np.ndarray:
        return np.asarray(self.base_vector, np.float32)

    def saw(self, event_id: str) -> bool:
        """Whether the event was applied: among the last ``SEEN_EVENTS_LIMIT``, or in the history,
        which keeps every change still to come however many a timeline scheduled."""
        return event_id in self.seen_events or any(h.get("event_id") == event_id for h in self.history)

    def remember(self, event_id: str) -> None:
        self.seen_events.append(event_id)
        del self.seen_events[:-SEEN_EVENTS_LIMIT]

    def set_state(self, state: CardiacState, event_id: str, seq: int, when: float, at: float | None = None,
                  transition: float = 0.0, now: float | None = None) -> None:
        """The state last asked for. ``at``: the stream time it holds from (with the heart-rate
        ``transition`` seconds), kept in the history so that a restored stream still makes the
        changes scheduled ahead; without it (registration) it holds from the stream's start.
        ``now``: the stream time of the next segment, before which changes are in the past."""
        self.state = state_to_dict(state)
        self.state_event_id = event_id
        self.state_since_seq = seq
        entry = {"event_id": event_id, "state": self.state, "seq": seq, "time": when}
        if at is not None:
            entry.update(at=at, transition=transition)
        self.history.append(entry)
        self._trim_history(float("-inf") if now is None else now)

    def _trim_history(self, now: float) -> None:
        """Down to ``HISTORY_LIMIT`` entries where it can be: the changes wholly in effect by
        ``now`` go, oldest first, all but the last of them (the state the rest start from).
        A change still to come is never dropped, so a restored stream makes every one (the
        service caps how many a patient may have)."""
        excess = len(self.history) - HISTORY_LIMIT
        if excess <= 0:
            return
        past = [i for i, h in enumerate(self.history) if change_at(h) + h.get("transition", 0.0) <= now]
        past.sort(key=lambda i: (change_at(self.history[i]), i))
        drop = set(past[:-1][:excess])
        self.history = [h for i, h in enumerate(self.history) if i not in drop]

    def scheduled_after(self, now: float) -> int:
        """How many changes in the history are still to come after stream time ``now``."""
        return sum(change_at(h) > now for h in self.history)

    def may_schedule(self, now: float) -> bool:
        """Whether one more change may be scheduled ahead (``SCHEDULED_LIMIT``)."""
        return self.scheduled_after(now) < SCHEDULED_LIMIT

    def start_time(self, seq: int, seconds: float) -> float:
        """Stream time at which segment ``seq`` starts, counted in the length the stream position
        records (``seconds`` for a record written before positions kept it)."""
        return float(self.stream_start) + seq * (self.segment_seconds or seconds)

    def view(self, segment_seconds: float | None) -> dict[str, Any]:
        """What the HTTP API shows of a patient (``segment_seconds`` None: not streaming).
        ``state`` is the last one asked for; ``published_state`` the one streaming now, and
        ``scheduled`` the changes still to come (their ``at`` after the next segment)."""
        live = segment_seconds is not None and self.stream_start is not None
        nxt = self.start_time(self.next_seq, segment_seconds) if live else None
        return {"patient_id": self.patient_id, "model_version": self.model_version, "state": self.state,
                "state_event_id": self.state_event_id, "next_seq": self.next_seq,
                "published_state": self.published_state, "history": self.history[-20:], "stream_time": nxt,
                "scheduled": [h for h in self.history if nxt is not None and h.get("at", nxt) > nxt],
                "remove_at": self.remove_at, "encoder_id": self.encoder_id or None}

    def to_json(self) -> bytes:
        # the fields hold JSON values already: a shallow dict serialises the same record as
        # dataclasses.asdict, without its deep copy of the history (1.7 ms -> 0.25 ms a record,
        # on the path of every condition event)
        return json.dumps({**{f.name: getattr(self, f.name) for f in fields(self)}, **self._acked}).encode()

    def position(self) -> dict[str, Any]:
        """The stream position: what the per-segment record carries, and what a failed
        publication or a damaged record puts back with ``set_position``."""
        return {k: getattr(self, k) for k in POSITION_FIELDS}

    def set_position(self, position: dict[str, Any]) -> None:
        for k, v in position.items():
            if k in POSITION_FIELDS:
                setattr(self, k, v)

    def position_json(self) -> bytes:
        return dumps_spliced(self.position(), "tail_b64")

    def apply_position(self, raw: bytes) -> None:
        """Update from a stream-position record; a damaged one (ValueError) changes nothing."""
        d = json_value(raw)  # unreadable: a ValueError, skipped as damaged
        if not isinstance(d, dict):
            raise ValueError("a position record is a JSON object")
        before = self.position()
        self.set_position(d)
        try:
            self._check_position()
        except ValueError:
            self.set_position(before)
            raise
        self._acked = self.position()

    @staticmethod
    def from_json(raw: bytes) -> Patient:
        """A patient record as written by ``to_json``; ValueError for anything else, so that one
        damaged changelog record is skipped on restore instead of stopping a worker's start."""
        d = json_value(raw)  # unreadable: a ValueError, skipped as damaged
        if not isinstance(d, dict):
            raise ValueError("a patient record is a JSON object")
        # fields this version does not know come from a newer one (a rolling upgrade): the record
        # is still the patient's latest, so it is read without them rather than skipped
        p = Patient(**{k: v for k, v in d.items() if k in PATIENT_FIELDS})
        base = np.asarray(p.base_vector, np.float32)
        if not isinstance(p.patient_id, str) or base.ndim != 1 or not np.isfinite(base).all():
            raise ValueError("patient_id must be a string and base_vector finite numbers")
        state_from_dict(p.state)  # EventError is a ValueError
        p._check_position()
        p._acked = p.position()
        return p

    def _check_position(self) -> None:
        if isinstance(self.next_seq, bool) or not isinstance(self.next_seq, int) or self.next_seq < 0:
            raise ValueError(f"next_seq must be a count, got {self.next_seq!r}")
        if self.stream_start is not None and not isinstance(self.stream_start, (int, float)):
            raise ValueError(f"stream_start must be epoch seconds, got {self.stream_start!r}")
        ss = self.segment_seconds
        if ss is not None and (isinstance(ss, bool) or not isinstance(ss, (int, float)) or not 0 < ss <= 3600):
            raise ValueError(f"segment_seconds must be a length in seconds, got {ss!r}")
        if self.tail_b64 is not None and not isinstance(self.tail_b64, str):
            raise ValueError("tail_b64 must be base64 text")


PATIENT_FIELDS = frozenset(f.name for f in fields(Patient))


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
                self.topic, p.position_json(), key=(p.patient_id + POSITION_SUFFIX).encode(),
                partition=partition_of(p.patient_id, self.partitions)))
        p.acknowledge(position)

    async def delete(self, pid: str) -> None:
        """Durable once this returns; the patient stays known until then, so that a failed
        delete is applied again when its event is."""
        if self.producer is not None:
            await self.producer.send_and_wait(self.topic, None, key=pid.encode())
            await self.producer.send_and_wait(self.topic, None, key=(pid + POSITION_SUFFIX).encode(),
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
                        key = m.key.decode(errors="replace") if m.key is not None else None
                        try:
                            if key is None:
                                raise ValueError("record without a key")
                            if not key.endswith(POSITION_SUFFIX):
                                restored[key] = Patient.from_json(m.value) if m.value is not None else None
                            elif m.value is not None and restored.get(key[:-len(POSITION_SUFFIX)]) is not None:
                                restored[key[:-len(POSITION_SUFFIX)]].apply_position(m.value)
                        except (ValueError, TypeError, AttributeError) as exc:
                            log.error("skipping unreadable registry record %s@%d: %s", key, m.offset, exc)
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
