"""Applying condition events: registration, state changes (now or scheduled), removal.

Each event's registry write is staged, and awaited with the rest of its batch before the
consumer commits (``confirm_writes``); an event applied before but whose write failed is written
again when it is re-delivered. An event that cannot be applied goes to the dead-letter topic
with the reason."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka.errors import KafkaError

from models.conditions import CardiacState, guided_if_new
from models.rhythm.pacing import stream_problem
from models.rhythm.render import BankError, bank_seed
from models.stress.artifacts import artifact
from models.twin import TwinModel
from stream.dead_letters import dead_letter_record
from stream.events import Event, EventError, parse_event, state_to_dict
from stream.kafka.producer import QueuedProducer, delivered, is_final
from twin_engine.config import Settings
from twin_engine.metrics import Metrics
from twin_engine.registry import Patient, Registry, partition_of
from twin_engine.registry.patient import ARTIFACTS_LIMIT
from twin_engine.worker.clock import StreamClock
from twin_engine.worker.publisher import Publisher
from twin_engine.worker.references import Reference, References
from twin_engine.worker.rhythm import make_bank
from twin_engine.worker.streams import Streams
from twin_engine.worker.timeline import StateChange

log = logging.getLogger(__name__)

RETRY_S = 1.0  # after Kafka failed while a scheduled removal was written
RHYTHM_NOT_DRAWN = "this patient's stream cannot draw named rhythms: {reason}"
ARTIFACT_NOT_DRAWN = "this patient's stream cannot draw artifacts: {reason}"


class EventHandler:
    """Applies validated events to the registry and the streams.

    Args:
        settings: limits (patients per worker and per deployment) and topic names.
        model: the vocabulary events are checked against, and the version records carry.
        registry, streams, publisher, references, clock: the worker's collaborators.
        producer: for dead letters.
        lock: the worker's partition lock, held while events are applied and partitions change
            hands; a scheduled removal takes it too.
    """

    def __init__(self, settings: Settings, model: TwinModel, registry: Registry, streams: Streams,
                 publisher: Publisher, references: References, clock: StreamClock, producer: QueuedProducer,
                 metrics: Metrics, lock: asyncio.Lock) -> None:
        self.settings, self.model, self.registry, self.streams = settings, model, registry, streams
        self.publisher, self.references, self.clock, self.producer = publisher, references, clock, producer
        self.metrics, self.lock = metrics, lock
        self.topics = settings.kafka
        self.not_durable: set[str] = set()  # patients whose last registry write failed
        # registry writes of the batch being applied, awaited together before its commit
        self._writes: list[tuple[str, asyncio.Future]] = []
        self._removals: set[asyncio.Task] = set()  # scheduled removals under way

    @property
    def staged(self) -> int:
        """How many registry writes of the batch at hand are in flight."""
        return len(self._writes)

    async def stop(self) -> None:
        """Cancel scheduled removals under way (one cut short is redone on restart)."""
        for task in list(self._removals):
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def handle(self, msg: Any) -> None:
        """Parse and apply one consumed record; what cannot be applied is dead-lettered.

        Raises:
            KafkaError: the broker failed a write; the event is to be applied again.
        """
        try:
            event = parse_event(msg.value or b"", self.model.meta.vocab)
            if msg.key is None or msg.key.decode(errors="replace") != event.patient_id:
                raise EventError("message key must be the patient id (it decides the partition)")
            self.metrics.events.labels(event.type).inc()
            await self.apply(event)
        except EventError as exc:
            await self._dead_letter(msg, str(exc))
        except KafkaError:  # not the event's fault: it is applied again, not dead-lettered
            raise
        except Exception:  # never let one message stop the stream
            log.exception("event at %s[%d]@%d failed", msg.topic, msg.partition, msg.offset)
            # the exception's text stays in the worker's log: it may name paths or internals
            await self._dead_letter(msg, f"internal error applying the event (the worker's log has it at "
                                         f"{msg.topic}[{msg.partition}]@{msg.offset})")

    async def confirm_writes(self) -> None:
        """Wait for the staged registry writes; the first failure is raised (a KafkaError)."""
        writes, self._writes = self._writes, []
        try:
            await delivered(f for _, f in writes)
        except BaseException:
            self.not_durable.update(pid for pid, _ in writes)
            raise

    def drop_writes(self) -> None:
        """Forget the staged writes of a batch that failed: their patients are written again."""
        self.not_durable.update(pid for pid, _ in self._writes)
        self._writes.clear()

    async def apply(self, ev: Event) -> None:
        """Apply one validated event; its registry write is staged, and durable once the batch's
        writes are confirmed, before the offset commit."""
        p = self.registry.get(ev.patient_id)
        if p is not None and p.saw(ev.event_id):
            if ev.patient_id in self.not_durable:  # applied before, but its registry write failed
                await self._write(p)
                self.not_durable.discard(ev.patient_id)
                if ev.patient_id not in self.streams:
                    self.streams.start(p)
            return  # re-delivery
        try:
            await self._apply_new(ev, p)
        except KafkaError:
            if p is not None or ev.type == "register":
                self.not_durable.add(ev.patient_id)
            raise
        self.not_durable.discard(ev.patient_id)

    async def _write(self, p: Patient) -> None:
        """The patient's registry record, durable by this batch's commit (``confirm_writes``)."""
        self._writes.append((p.patient_id, await self.registry.stage(p)))

    async def _apply_new(self, ev: Event, p: Patient | None) -> None:
        if ev.type == "register":
            await self._register(ev, p)
        elif p is None:
            raise EventError(f"unknown patient {ev.patient_id!r}")
        elif ev.type == "remove":
            await self._remove_event(ev, p)
        elif ev.patient_id in self.streams.held:
            raise EventError(f"patient {ev.patient_id!r} is held, not streamed: {self.streams.held[ev.patient_id]}")
        elif ev.type == "artifact":
            await self._artifact(ev, p)
        else:
            await self._change(ev, p)

    async def _artifact(self, ev: Event, p: Patient) -> None:
        """Schedule noise or an artifact from its effective time (or the next segment not yet
        published); the segments made ahead are made again with it."""
        stream = self.streams[ev.patient_id]
        if not stream.draws_rhythms:  # its SNR is against the bank's QRS amplitude
            raise EventError(ARTIFACT_NOT_DRAWN.format(reason=stream.rhythm_problem or "the rhythm layer is off"))
        now = stream.start_time(p.next_seq)
        if p.artifacts_after(now) >= ARTIFACTS_LIMIT:
            raise EventError(f"patient {ev.patient_id!r} already has {ARTIFACTS_LIMIT} artifacts not yet over "
                             "(the most one patient may have)")
        at = now if ev.effective_time is None else max(now, ev.effective_time)
        a = artifact({**ev.artifact, "at": at}, self.model.meta.leads, "artifact")
        entry = {**a.to_dict(), "event_id": ev.event_id, "seed": bank_seed(ev.event_id)}
        p.add_artifact(entry, now)
        stream.artifacts_changed()
        p.remember(ev.event_id)
        await self._write(p)

    async def _change(self, ev: Event, p: Patient) -> None:
        stream = self.streams[ev.patient_id]
        now = stream.start_time(p.next_seq)
        ahead = ev.effective_time is not None and ev.effective_time > now
        if ahead and not p.may_schedule(now):
            raise EventError(f"patient {ev.patient_id!r} already has {p.scheduled_after(now)} changes still "
                             "to come (the most one patient may have scheduled)")
        # regeneration starts now, while the registry write is in flight: the offset commit
        # (after this returns) still waits for durability, and a crash before it re-delivers
        # the event, so the one write's latency is kept off the event-to-effect path
        if ev.rhythm is not None and not stream.draws_rhythms:
            raise EventError(RHYTHM_NOT_DRAWN.format(reason=stream.rhythm_problem or "the rhythm layer is off"))
        if stream_problem(ev.rhythm):
            raise EventError(stream_problem(ev.rhythm))
        state = self._guided(p, ev.state) if ev.state is not None else p.cardiac_state  # a rhythm alone keeps it
        at = stream.change_state(StateChange(state, ev.event_id, ev.effective_time, ev.transition_seconds,
                                             time.monotonic(), rhythm=ev.rhythm))
        p.set_state(state, ev.event_id, p.next_seq, time.time(), at, ev.transition_seconds, now=now, rhythm=ev.rhythm)
        p.remember(ev.event_id)
        await self._write(p)

    async def _remove_event(self, ev: Event, p: Patient) -> None:
        stream = self.streams.get(ev.patient_id)
        if stream is not None and ev.effective_time is not None and ev.effective_time > stream.start_time(p.next_seq):
            # scheduled: the stream publishes the segments that start before it, then ends
            # (``stream_ended``); the time is in the registry, so a restart keeps it
            p.remove_at, p.remove_event_id = ev.effective_time, ev.event_id
            p.remember(ev.event_id)
            stream.end_moved()
            await self._write(p)
            return
        # the batch's earlier writes first: one that failed after the patient was gone would
        # re-deliver its event to an unknown patient (a dead letter, not a retry)
        await self.confirm_writes()
        await self._remove(p, self.clock.now() if stream is None else stream.start_time(p.next_seq))

    async def _remove(self, p: Patient, end_time: float) -> None:
        """Stop the patient's stream, end its ground truth at ``end_time``, delete its record."""
        await self.streams.stop(p.patient_id)
        await self.publisher.close_annotation(p, end_time)
        await self.registry.delete(p.patient_id)
        await self.publisher.removed(p.patient_id)

    def stream_ended(self, pid: str) -> None:
        """A stream reached its scheduled removal (called from the stream's own task)."""
        task = asyncio.create_task(self._remove_scheduled(pid), name=f"remove-{pid}")
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)

    async def _remove_scheduled(self, pid: str) -> None:
        """Remove a patient whose stream ended at its ``remove_at``, as its remove event would
        have, retrying while the broker is unreachable. Until the delete is through, the record
        keeps ``remove_at``, so a restart (or the partition's next owner) ends the stream again
        and comes back here."""
        end_time = None
        while True:
            async with self.lock:  # not interleaved with events or a partition handover
                p, stream = self.registry.get(pid), self.streams.get(pid)
                if p is None or p.remove_at is None or (end_time is None and stream is None):
                    return  # revoked, removed or re-registered meanwhile
                if end_time is None:
                    if not stream.ended_before(p.next_seq):
                        # a later remove moved the end after this stream had stopped for the old one
                        self.streams.start(p)
                        return
                    end_time = stream.start_time(p.next_seq)
                try:
                    await self._remove(p, end_time)
                    log.info("%s removed at its scheduled time (event %s)", pid, p.remove_event_id)
                    return
                except KafkaError as exc:
                    self.metrics.kafka_errors.inc()
                    log.error("removing %s failed (%s: %s); retrying in %.0f s", pid, exc.__class__.__name__, exc,
                              RETRY_S)
            await asyncio.sleep(RETRY_S)  # with the lock free: events and handovers go on

    async def _register(self, ev: Event, existing: Patient | None) -> None:
        if stream_problem(ev.rhythm):
            raise EventError(stream_problem(ev.rhythm))
        if existing is None:
            self._check_room(ev.patient_id)
        state = ev.state or (existing.cardiac_state if existing else None) or CardiacState()
        ref = await self._calibrated(ev.patient_id, await asyncio.to_thread(self.references.read, ev.reference, state),
                                     state)
        base = ref.base
        if existing is not None:  # re-registration: new base vector, stream continues
            await self.streams.stop(ev.patient_id)
            p = existing
            p.base_vector = base.tolist()
            p.model_version = self.model.meta.version
            p.remove_at = p.remove_event_id = None  # registered again: a scheduled removal is off
        else:
            p = Patient(ev.patient_id, base.tolist(), self.model.meta.version, state_to_dict(state))
        p.encoder_id = self.model.encoder_id
        p.mv_scale, p.mv_source = [round(float(v), 5) for v in ref.mv_scale], ref.mv_source
        p.estimated_leads = list(ref.estimated)
        p.registered_statements = dict(state.statements)
        # a re-registered stream goes on: its state holds from the next segment, after what the
        # history already holds there (a new one's holds from its start); in the length its
        # position counts in, which the new stream keeps the next segment's time in
        seconds = self.streams.segment_samples / self.model.meta.fs
        at = None if p.stream_start is None else p.start_time(p.next_seq, seconds)
        p.set_state(state, ev.event_id, p.next_seq, time.time(), at, now=at, rhythm=ev.rhythm)
        p.remember(ev.event_id)
        await self._write(p)
        self.streams.start(p)

    def _guided(self, p: Patient, state: CardiacState) -> CardiacState:
        """``state`` with contrastive guidance asked for where it adds morphology the patient
        was not registered with (``contrast_new_morphology``)."""
        if not self.settings.contrast_new_morphology:
            return state
        return guided_if_new(state, p.registered_statements, self.model.meta.contrast)

    async def _calibrated(self, pid: str, ref: Reference, state: CardiacState) -> Reference:
        """``ref`` with the twin's QRS matched to the reference's height (a reference in mV): the
        patient's own bank in ``state``'s morphology, made as its stream makes it (through the
        batcher, whose model no other thread may call: a GPU backend's graphs are not re-entrant)."""
        if ref.qrs_mv is None or not self.settings.rhythm_layer:
            return ref
        try:
            bank = await make_bank(self.streams.batcher.submit, ref.base, state, bank_seed(pid), self.model.meta.fs,
                                   time.monotonic())
        except BankError:  # no beats to measure (the tests' tiny model): the band SD's scales
            return ref
        return ref.calibrated(bank)

    def _check_room(self, pid: str) -> None:
        """EventError when a new patient would pass the worker's or its partition's share of the
        deployment's limit (each partition holds max_patients / partitions, so the deployment's
        bound holds however the partitions are spread over workers)."""
        s, n = self.settings, self.topics.partitions
        if len(self.registry) >= s.max_patients_per_worker:
            raise EventError(f"this worker holds its most patients ({s.max_patients_per_worker}, "
                             "max_patients_per_worker); remove some or add workers")
        share = -(-s.max_patients // n)
        part = partition_of(pid, n)
        if sum(partition_of(q, n) == part for q in self.registry.patients) >= share:
            raise EventError(f"partition {part} holds its share of the deployment's {s.max_patients} patients "
                             f"({share}, max_patients)")

    async def _dead_letter(self, msg: Any, reason: str) -> None:
        value = msg.value or b""
        topic = self.topics.topic_dead_letter
        record = dead_letter_record(reason, msg.topic, msg.partition, msg.offset, value)
        try:
            await self.producer.send_and_wait(topic, record, key=msg.key)
        except KafkaError as exc:
            if not is_final(exc):
                raise  # unreachable: the event is handled again after the back-off
            # too large even cut (a topic with a small max.message.bytes): size and hash only
            record = dead_letter_record(reason, msg.topic, msg.partition, msg.offset, value, limit=0)
            await self.producer.send_and_wait(topic, record, key=None)
        self.metrics.dead_letters.labels(reason.split(":")[0][:60]).inc()
        log.warning("dead-lettered %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, reason)
