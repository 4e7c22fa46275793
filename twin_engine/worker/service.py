"""The twin service: events -> registry and streams -> batched generation -> segments -> sinks.

One ``TwinService`` is one worker of a consumer group. It owns the patients of the event
partitions Kafka assigns it: on assignment it rebuilds them from the registry changelog and
starts their streams; on revocation it stops them. Offsets are committed only after each
event's effect is durable in the registry (at-least-once); a re-delivered event id is applied
once. Anything undecodable or invalid goes to the dead-letter topic with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from models.conditions import CardiacState
from models.twin import TwinModel
from stream.dead_letters import dead_letter_record
from stream.events import Event, EventError, parse_event, state_to_dict
from stream.producer import QueuedProducer, is_final
from twin_engine.backends.runtime import batch_limit, log_choice
from twin_engine.broker import (
    delivered,
    engine_topics,
    ensure_topics,
    idempotence_supported,
    send_events,
)
from twin_engine.config import Settings
from twin_engine.crash_points import crash_point
from twin_engine.metrics import Metrics
from twin_engine.registry import BrokerStateLost, Patient, Registry, partition_of
from twin_engine.worker.batcher import MicroBatcher
from twin_engine.worker.broker_watch import BrokerWatch
from twin_engine.worker.clock import StreamClock
from twin_engine.worker.generator import ContinuousGenerator, GenRequest
from twin_engine.worker.publisher import Publisher
from twin_engine.worker.references import References
from twin_engine.worker.sinks import Sink
from twin_engine.worker.stream import PatientStream
from twin_engine.worker.timeline import StateChange

log = logging.getLogger(__name__)
CONSUME_RETRY_S = 1.0  # after Kafka failed while events were applied


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, service: TwinService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked) -> None:
        await self.service._release({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned) -> None:
        await self.service._acquire(sorted(tp.partition for tp in assigned))


class TwinService:
    def __init__(self, settings: Settings, model: TwinModel, sinks: list[Sink] | None = None,
                 metrics: Metrics | None = None,
                 generate: Callable[[list[GenRequest]], list[np.ndarray]] | None = None) -> None:
        """``generate``: the batched generation call, by default the model's continuous
        generator; `bench serve --generator null` passes an instant one to measure what the
        service itself costs per segment."""
        self.settings, self.model = settings, model
        self.metrics = metrics or Metrics()
        self.sinks: list[Sink] = list(sinks or [])
        k = settings.kafka
        self.kafka_kwargs = k.client_kwargs()
        self.topics = k
        self.references = References(settings, model)
        self.generator = ContinuousGenerator(model, settings.steps, settings.sampler, settings.guidance_scale)
        self.batcher = MicroBatcher(generate or self.generator.generate, batch_limit(settings, model.device.type),
                                    settings.max_wait_ms / 1000, self.metrics)
        self.clock = StreamClock(settings.speed)
        self.segment_samples = int(round(settings.segment_seconds * model.meta.fs))
        self.streams: dict[str, PatientStream] = {}
        self.producer: QueuedProducer | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.registry: Registry | None = None
        self.publisher: Publisher | None = None
        self.ready = asyncio.Event()
        # set when this worker cannot go on (a Kafka error no retry fixes): the process exits
        # with ``failure`` as its message, and the orchestrator's restart or the operator decides
        self.failed = asyncio.Event()
        self.failure: str | None = None
        self.lost: str | None = None  # why the broker is known to have lost state (then never ready)
        self.watch: BrokerWatch | None = None
        self._closing = False
        self._owned: set[int] = set()
        self._not_durable: set[str] = set()  # patients whose last registry write failed
        # restored patients whose base vector does not fit this model, and why: kept in the
        # registry unstreamed until registered again (or removed)
        self.held: dict[str, str] = {}
        # registry writes of the batch being applied, awaited together before its commit
        self._writes: list[tuple[str, asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        self._removals: set[asyncio.Task] = set()  # scheduled removals under way
        # Rebalance callbacks and event handling never interleave: aiokafka may deliver records
        # of a partition while its on_partitions_assigned (the registry restore) still runs.
        self._partition_lock = asyncio.Lock()

    # ---- life cycle -------------------------------------------------------------------
    async def start(self) -> None:
        k = self.topics
        backend, device = log_choice(self.model, self.settings)
        self.metrics.backend.labels(backend, device).set(1)
        await ensure_topics(self.kafka_kwargs, engine_topics(k), k.replication_factor, k.connect_timeout_s)
        # a segment is 16 kB (2 s) to 80 kB (10 s) of JSON, over aiokafka's 16 kB default batch,
        # so each went out in a produce request of its own; 512 kB lets the sender group what
        # queues while a request is in flight (under Kafka's 1 MB message.max.bytes default)
        idempotent = k.idempotence == "on" or (k.idempotence == "auto" and await idempotence_supported(self.kafka_kwargs))
        log.info("idempotent producer: %s", "on" if idempotent else "off (the brokers give no producer ids)")
        self.producer = QueuedProducer(AIOKafkaProducer(acks="all", linger_ms=k.linger_ms, max_batch_size=512 * 1024,
                                                        enable_idempotence=idempotent, **self.kafka_kwargs),
                                       k.partitions)
        await self.producer.start()
        self.registry = Registry(self.producer, k.topic_registry, k.partitions)
        self.publisher = Publisher(self.producer, self.registry, k, self.sinks, self.metrics)
        self.watch = BrokerWatch(self.kafka_kwargs, engine_topics(k), self.registry, self.settings.broker_check_s,
                                 self._broker_lost)
        self.watch.start()
        self.batcher.start()
        self.consumer = AIOKafkaConsumer(group_id=k.group_id, enable_auto_commit=False,
                                         auto_offset_reset="earliest", **k.consumer_kwargs())
        self.consumer.subscribe([k.topic_events], listener=_Rebalance(self))
        await self.consumer.start()
        self._task = asyncio.create_task(self._consume(), name="events")

    async def stop(self) -> None:
        """Graceful: stop consuming, finish in-flight publishes, commit, close."""
        self._closing = True
        for task in (self._task, *self._removals):  # a removal cut short is redone on restart
            if task:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await asyncio.gather(*(s.stop() for s in self.streams.values()))
        self.streams.clear()
        await self.batcher.stop()
        if self.watch:
            await self.watch.stop()
        if self.consumer:
            await self.consumer.stop()  # commits nothing new: every handled batch was committed
        if self.producer:
            await self.producer.flush()
            await self.producer.stop()

    # ---- partitions ---------------------------------------------------------------------
    async def _acquire(self, partitions: list[int]) -> None:
        async with self._partition_lock:
            await self._acquire_locked(partitions)

    async def _restore(self, partitions: list[int]) -> list[str] | None:
        """The registry restore of ``partitions``, each try under a deadline, tried again with a
        back-off (aiokafka swallows what its rebalance listener raises: a failed restore would
        leave the partitions assigned and unserved). None: given up or the broker lost state,
        and the worker is failed or not ready, saying why."""
        assert self.registry is not None
        s = self.settings
        for attempt in range(1, s.restore_attempts + 1):
            if self.lost is not None or self._closing:
                return None  # nothing to restore from a broker that lost its data, or stopping
            try:
                return await asyncio.wait_for(self.registry.restore(self.kafka_kwargs, partitions), s.restore_timeout_s)
            except BrokerStateLost as exc:
                self._broker_lost(str(exc))
                return None
            except (KafkaError, OSError, TimeoutError) as exc:
                what = "timed out" if isinstance(exc, TimeoutError) else f"failed ({exc.__class__.__name__}: {exc})"
                log.error("restoring partitions %s %s, try %d of %d", partitions, what, attempt, s.restore_attempts)
                if attempt < s.restore_attempts:
                    await asyncio.sleep(min(30.0, 2.0 ** attempt))
        self.fail(f"the registry of partitions {partitions} could not be restored in {s.restore_attempts} tries "
                  f"of {s.restore_timeout_s:g} s")
        return None

    def _broker_lost(self, reason: str) -> None:
        """The broker no longer holds what it acknowledged: never ready again in this process
        (restoring from it would start fewer patients, silently), and loud about it."""
        if self.lost is None:
            log.critical("THE KAFKA BROKER LOST ITS STATE: %s. This worker stays not ready; patients streamed here "
                         "are not in the registry any more. Restore the broker's data, or register the patients "
                         "again, then restart the workers.", reason)
            self.lost = reason
        self.metrics.broker_state_lost.set(1)
        self.ready.clear()

    def unhealthy(self) -> str | None:
        """Why this worker should be restarted (liveness), or None."""
        if self.failure is not None:
            return self.failure
        if self._task is not None and not self.batcher.alive:
            return "the generation batcher stopped"
        return None

    async def _acquire_locked(self, partitions: list[int]) -> None:
        assert self.registry is not None
        restored = await self._restore(partitions)
        if restored is None:
            return
        self._owned |= set(partitions)
        if not self.streams and self.clock.speed > 1:
            # nothing streams here yet: the clock goes on from the restored streams' time, not
            # from the wall clock they ran ahead of (to one segment before the latest next
            # segment: where the last ones published started); once streams run here it keeps
            # its pace, and patients taken over later wait for it
            ahead = [p.start_time(p.next_seq - 1, p.segment_seconds) for p in
                     (self.registry.patients[pid] for pid in restored)
                     if p.stream_start is not None and p.segment_seconds]
            if ahead:
                self.clock.advance_to(max(ahead))
        for pid in restored:
            if pid in self.streams:
                continue
            why = self._unfit(self.registry.patients[pid])
            if why is None:
                self._start_stream(self.registry.patients[pid])
            else:
                self.held[pid] = why
                log.error("%s is held, not streamed: %s", pid, why)
        self.metrics.live_patients.set(len(self.streams))
        self.metrics.held_patients.set(len(self.held))
        log.info("owning partitions %s: %d patients restored", partitions, len(restored))
        if self.lost is None and self.failure is None:
            self.ready.set()

    async def _release(self, partitions: set[int]) -> None:
        async with self._partition_lock:
            await self._release_locked(partitions)

    async def _release_locked(self, partitions: set[int]) -> None:
        if not partitions or self.registry is None:
            return
        n = self.topics.partitions
        gone = [pid for pid in self.streams if partition_of(pid, n) in partitions]
        await asyncio.gather(*(self.streams.pop(pid).stop() for pid in gone))
        for pid in [pid for pid in self.held if partition_of(pid, n) in partitions]:
            del self.held[pid]
        self.metrics.held_patients.set(len(self.held))
        self.registry.drop_partitions(partitions)
        self._owned -= partitions
        if not self._owned:  # ready means serving partitions; a rebalance hands them out again
            self.ready.clear()
        self.metrics.live_patients.set(len(self.streams))

    # ---- events -------------------------------------------------------------------------
    async def _consume(self) -> None:
        assert self.consumer is not None
        while True:
            try:
                await self._consume_batch()
            except KafkaError as exc:  # the broker unreachable past the clients' own retries
                self.metrics.kafka_errors.inc()
                if is_final(exc):  # a refused credential or topic: retrying cannot help
                    self.fail(f"Kafka refused this worker ({exc.__class__.__name__}); check its credentials "
                              "and the topics' ACLs")
                    return
                log.error("consuming events failed (%s: %s); retrying in %.0f s", exc.__class__.__name__, exc,
                          CONSUME_RETRY_S)
                await asyncio.sleep(CONSUME_RETRY_S)

    async def _consume_batch(self) -> None:
        """One fetch, applied and committed. The registry writes of a partition's events go out
        together and are awaited once, before its commit. If Kafka fails while applying (a
        registry or dead-letter write), this partition rewinds to the first event whose write
        was not confirmed (or the failed one) and the partitions not yet handled to their
        first: all are fetched again after the back-off, none skipped."""
        assert self.consumer is not None
        batch = await self.consumer.getmany(timeout_ms=200, max_records=500)
        if not batch:
            return
        async with self._partition_lock:
            todo = [(tp, msgs) for tp, msgs in batch.items() if msgs]
            for i, (tp, msgs) in enumerate(todo):
                if tp.partition not in self._owned:
                    continue  # revoked meanwhile: its new owner re-reads from the commit
                first_staged = current = None  # offsets: first event with a write in flight, event at hand
                try:
                    for m in msgs:
                        current, staged = m.offset, len(self._writes)
                        await self._handle(m)
                        if first_staged is None and len(self._writes) > staged:
                            first_staged = m.offset
                    current = None
                    await self._confirm_writes()
                    crash_point("events-durable")
                except KafkaError:
                    self._not_durable.update(pid for pid, _ in self._writes)
                    self._writes.clear()
                    self.consumer.seek(tp, min(o for o in (first_staged, current) if o is not None))
                    for later, later_msgs in todo[i + 1:]:
                        if later.partition in self._owned:
                            self.consumer.seek(later, later_msgs[0].offset)
                    raise
                try:
                    await self.consumer.commit({tp: msgs[-1].offset + 1})
                except (CommitFailedError, IllegalStateError) as exc:
                    # lost the partition mid-batch: the new owner re-reads from the last
                    # commit and skips the event ids already applied
                    log.warning("commit of %s failed: %s", tp, exc)
                except KafkaError as exc:  # applied and durable: a later commit covers them
                    log.warning("commit of %s failed: %s", tp, exc)

    async def _confirm_writes(self) -> None:
        """Wait for the staged registry writes; the first failure is raised (a KafkaError)."""
        writes, self._writes = self._writes, []
        try:
            await delivered(f for _, f in writes)
        except BaseException:
            self._not_durable.update(pid for pid, _ in writes)
            raise

    async def _write(self, p: Patient) -> None:
        """The patient's registry record, durable by this batch's commit (``_confirm_writes``)."""
        assert self.registry is not None
        self._writes.append((p.patient_id, await self.registry.stage(p)))

    async def _handle(self, msg: Any) -> None:
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

    def fail(self, reason: str) -> None:
        """Stop serving: not ready, and ``failed`` set for the process to exit with ``reason``."""
        if self.failure is None:
            log.critical("worker cannot go on: %s", reason)
            self.failure = reason
        self.ready.clear()
        self.failed.set()

    async def _dead_letter(self, msg: Any, reason: str) -> None:
        assert self.producer is not None
        value = msg.value or b""
        record = dead_letter_record(reason, msg.topic, msg.partition, msg.offset, value)
        try:
            await self.producer.send_and_wait(self.topics.topic_dead_letter, record, key=msg.key)
        except KafkaError as exc:
            if not is_final(exc):
                raise  # unreachable: the event is handled again after the back-off
            # too large even cut (a topic with a small max.message.bytes): size and hash only
            record = dead_letter_record(reason, msg.topic, msg.partition, msg.offset, value, limit=0)
            await self.producer.send_and_wait(self.topics.topic_dead_letter, record, key=None)
        self.metrics.dead_letters.labels(reason.split(":")[0][:60]).inc()
        log.warning("dead-lettered %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, reason)

    async def apply(self, ev: Event) -> None:
        """Apply one validated event; its registry write is staged (``_write``), and durable
        once the batch's writes are confirmed, before the offset commit."""
        assert self.registry is not None
        p = self.registry.get(ev.patient_id)
        if p is not None and p.saw(ev.event_id):
            if ev.patient_id in self._not_durable:  # applied before, but its registry write failed
                await self._write(p)
                self._not_durable.discard(ev.patient_id)
                if ev.patient_id not in self.streams:
                    self._start_stream(p)
            return  # re-delivery
        try:
            await self._apply_new(ev, p)
        except KafkaError:
            if p is not None or ev.type == "register":
                self._not_durable.add(ev.patient_id)
            raise
        self._not_durable.discard(ev.patient_id)
        self.metrics.live_patients.set(len(self.streams))

    async def _apply_new(self, ev: Event, p: Patient | None) -> None:
        assert self.registry is not None
        if ev.type == "register":
            await self._register(ev, p)
        elif p is None:
            raise EventError(f"unknown patient {ev.patient_id!r}")
        elif ev.type == "remove":
            stream = self.streams.get(ev.patient_id)
            if stream is not None and ev.effective_time is not None and ev.effective_time > stream.start_time(p.next_seq):
                # scheduled: the stream publishes the segments that start before it, then ends
                # (``_remove_scheduled``); the time is in the registry, so a restart keeps it
                p.remove_at, p.remove_event_id = ev.effective_time, ev.event_id
                p.remember(ev.event_id)
                stream.end_moved()
                await self._write(p)
                return
            # the batch's earlier writes first: one that failed after the patient was gone would
            # re-deliver its event to an unknown patient (a dead letter, not a retry)
            await self._confirm_writes()
            await self._remove(p, self.clock.now() if stream is None else stream.start_time(p.next_seq))
        elif ev.patient_id in self.held:
            raise EventError(f"patient {ev.patient_id!r} is held, not streamed: {self.held[ev.patient_id]}")
        else:
            stream = self.streams[ev.patient_id]
            now = stream.start_time(p.next_seq)
            ahead = ev.effective_time is not None and ev.effective_time > now
            if ahead and not p.may_schedule(now):
                raise EventError(f"patient {ev.patient_id!r} already has {p.scheduled_after(now)} changes still "
                                 "to come (the most one patient may have scheduled)")
            # regeneration starts now, while the registry write is in flight: the offset commit
            # (after this returns) still waits for durability, and a crash before it re-delivers
            # the event, so the one write's latency is kept off the event-to-effect path
            at = stream.change_state(StateChange(ev.state, ev.event_id, ev.effective_time, ev.transition_seconds,
                                                 time.monotonic()))
            p.set_state(ev.state, ev.event_id, p.next_seq, time.time(), at, ev.transition_seconds, now=now)
            p.remember(ev.event_id)
            await self._write(p)

    async def _remove(self, p: Patient, end_time: float) -> None:
        """Stop the patient's stream, end its ground truth at ``end_time``, delete its record."""
        assert self.registry is not None
        stream = self.streams.pop(p.patient_id, None)
        if stream:
            await stream.stop()
        await self.publisher.close_annotation(p, end_time)
        await self.registry.delete(p.patient_id)
        await self.publisher.removed(p.patient_id)
        self.held.pop(p.patient_id, None)
        self.metrics.live_patients.set(len(self.streams))
        self.metrics.held_patients.set(len(self.held))

    def _stream_ended(self, pid: str) -> None:
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
            async with self._partition_lock:  # not interleaved with events or a partition handover
                p, stream = self.registry.get(pid) if self.registry else None, self.streams.get(pid)
                if p is None or p.remove_at is None or (end_time is None and stream is None):
                    return  # revoked, removed or re-registered meanwhile
                if end_time is None:
                    if not stream.ended_before(p.next_seq):
                        # a later remove moved the end after this stream had stopped for the old one
                        self._start_stream(p)
                        return
                    end_time = stream.start_time(p.next_seq)
                try:
                    await self._remove(p, end_time)
                    log.info("%s removed at its scheduled time (event %s)", pid, p.remove_event_id)
                    return
                except KafkaError as exc:
                    self.metrics.kafka_errors.inc()
                    log.error("removing %s failed (%s: %s); retrying in %.0f s", pid, exc.__class__.__name__, exc,
                              CONSUME_RETRY_S)
            await asyncio.sleep(CONSUME_RETRY_S)  # with the lock free: events and handovers go on

    async def _register(self, ev: Event, existing: Patient | None) -> None:
        if existing is None:
            self._check_room(ev.patient_id)
        base = await asyncio.to_thread(self.references.base_vector, ev.reference)
        state = ev.state or (existing.cardiac_state if existing else None) or CardiacState()
        if existing is not None:  # re-registration: new base vector, stream continues
            stream = self.streams.pop(ev.patient_id, None)
            if stream:
                await stream.stop()
            p = existing
            p.base_vector = base.tolist()
            p.model_version = self.model.meta.version
            p.remove_at = p.remove_event_id = None  # registered again: a scheduled removal is off
        else:
            p = Patient(ev.patient_id, base.tolist(), self.model.meta.version, state_to_dict(state))
        p.encoder_id = self.model.encoder_id
        # a re-registered stream goes on: its state holds from the next segment, after what the
        # history already holds there (a new one's holds from its start); in the length its
        # position counts in, which the new stream keeps the next segment's time in
        at = None if p.stream_start is None else p.start_time(p.next_seq, self.segment_samples / self.fs)
        p.set_state(state, ev.event_id, p.next_seq, time.time(), at, now=at)
        p.remember(ev.event_id)
        await self._write(p)
        if self.held.pop(p.patient_id, None) is not None:
            self.metrics.held_patients.set(len(self.held))
        self._start_stream(p)

    def _unfit(self, p: Patient) -> str | None:
        """Why a restored patient's base vector cannot drive this model (None: it can). Streamed
        anyway, a vector of another size would fail every generation batch it joined, and one
        from another encoder would make a different person's ECG under the old name."""
        dim, mine = self.model.ibe.cfg.base_dim, self.model.encoder_id
        if len(p.base_vector) != dim:
            why = f"its base vector has {len(p.base_vector)} numbers, this model's have {dim}"
        elif p.encoder_id and p.encoder_id != mine:
            why = (f"its base vector comes from encoder {p.encoder_id} (model {p.model_version}), "
                   f"this model ({self.model.meta.version}) has encoder {mine}")
        else:
            return None
        return f"{why}; register it again from its reference ECG"

    def _check_room(self, pid: str) -> None:
        """EventError when a new patient would pass the worker's or its partition's share of the
        deployment's limit (each partition holds max_patients / partitions, so the deployment's
        bound holds however the partitions are spread over workers)."""
        assert self.registry is not None
        s, n = self.settings, self.topics.partitions
        if len(self.registry) >= s.max_patients_per_worker:
            raise EventError(f"this worker holds its most patients ({s.max_patients_per_worker}, "
                             "max_patients_per_worker); remove some or add workers")
        share = -(-s.max_patients // n)
        part = partition_of(pid, n)
        if sum(partition_of(q, n) == part for q in self.registry.patients) >= share:
            raise EventError(f"partition {part} holds its share of the deployment's {s.max_patients} patients "
                             f"({share}, max_patients)")

    # ---- streams and publishing --------------------------------------------------------------
    def _start_stream(self, p: Patient) -> None:
        s = self.settings
        stream = PatientStream(
            p, clock=self.clock, batcher=self.batcher, fs=self.model.meta.fs,
            segment_samples=self.segment_samples, context_samples=self.generator.context,
            lookahead=s.lookahead_segments, leads=self.model.meta.leads,
            model_version=self.model.meta.version, publish=self.publisher.publish, metrics=self.metrics,
            on_end=lambda: self._stream_ended(p.patient_id))
        self.streams[p.patient_id] = stream
        stream.start()

    # ---- requests from the HTTP API and CLI ----------------------------------------------------
    @property
    def vocab(self) -> tuple[str, ...]:
        return self.model.meta.vocab

    @property
    def fs(self) -> int:
        return self.model.meta.fs

    def patient_ids(self) -> list[str]:
        """The patients of this worker's partitions: streaming here, or held (their views say why)."""
        return sorted(set(self.streams) | set(self.held))

    def patient_view(self, pid: str) -> dict | None:
        p = self.registry.get(pid) if self.registry else None
        stream = self.streams.get(pid)
        return None if p is None else {**p.view(stream.seconds if stream else None), "held": self.held.get(pid)}

    def why_unknown(self, pid: str) -> str:
        """A patient of another worker's partitions is not unknown, only not here: say so."""
        part = partition_of(pid, self.topics.partitions)
        if part in self._owned:
            return "unknown patient"
        return (f"patient {pid!r} would be on partition {part}, which this worker does not serve "
                f"(it serves {sorted(self._owned)}); `twin-engine monitor` shows every patient")

    async def send_event(self, ev: Event) -> None:
        """Publish an event to the events topic: the same path as any producer's events."""
        await self.send_events([ev])

    async def send_events(self, events: Iterable[Event]) -> None:
        """Publish many events and wait once for all of them: a ward of thousands onboards in one
        producer batch, not one broker round trip each behind the streams already running."""
        assert self.producer is not None
        await send_events(self.producer, self.topics.topic_events, events)
