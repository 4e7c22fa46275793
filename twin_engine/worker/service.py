"""The twin service: events -> registry and streams -> batched generation -> segments -> sinks.

One ``TwinService`` is one worker of a consumer group, a front class over its collaborators (as
aiokafka's consumer is over its fetcher and coordinator): ``Partitions`` takes and gives back
event partitions (the registry restore), ``EventHandler`` applies events, ``Streams`` runs the
patients' streams, ``Publisher`` sends what they make. The service itself consumes: offsets are
committed only after each event's effect is durable in the registry (at-least-once); a
re-delivered event id is applied once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

import numpy as np
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from models.twin import TwinModel
from stream.events import Event
from stream.kafka.producer import QueuedProducer, is_final, send_events
from stream.kafka.topics import ensure_topics
from twin_engine.backends.runtime import batch_limit, log_choice
from twin_engine.config import Settings
from twin_engine.crash_points import crash_point
from twin_engine.metrics import Metrics
from twin_engine.registry import Registry, partition_of
from twin_engine.worker.batcher import MicroBatcher
from twin_engine.worker.broker_watch import BrokerWatch
from twin_engine.worker.clock import StreamClock
from twin_engine.worker.events import EventHandler
from twin_engine.worker.generator import ContinuousGenerator, GenRequest
from twin_engine.worker.health import Health
from twin_engine.worker.partitions import Partitions
from twin_engine.worker.publisher import Publisher
from twin_engine.worker.references import References
from twin_engine.worker.sinks import Sink
from twin_engine.worker.streams import Streams

log = logging.getLogger(__name__)
CONSUME_RETRY_S = 1.0  # after Kafka failed while events were applied


class TwinService:
    """One worker: built whole here (inside a running event loop, as aiokafka's clients are),
    connected by ``start``.

    Args:
        settings: the deployment's configuration.
        model: the twin model the streams generate with.
        sinks: where segments and annotations go besides Kafka (WebSocket hub, WFDB files).
        metrics: the worker's Prometheus metrics (shared with the sinks that count too).
        generate: the batched generation call, by default the model's continuous generator;
            `bench serve --generator null` passes an instant one to measure what the service
            itself costs per segment.
    """

    def __init__(self, settings: Settings, model: TwinModel, sinks: list[Sink] | None = None,
                 metrics: Metrics | None = None,
                 generate: Callable[[list[GenRequest]], list[np.ndarray]] | None = None) -> None:
        self.settings, self.model = settings, model
        self.metrics = metrics or Metrics()
        k = self.topics = settings.kafka
        self.kafka_kwargs = k.client_kwargs()
        self.health = Health(self.metrics)
        self.lock = asyncio.Lock()  # events, handovers and scheduled removals, one at a time
        self.generator = ContinuousGenerator(model, settings.steps, settings.sampler, settings.guidance_scale,
                                             denoiser=settings.denoiser, contrast=settings.contrast_guidance)
        self.batcher = MicroBatcher(generate or self.generator.generate, batch_limit(settings, model.device.type),
                                    settings.max_wait_ms / 1000, self.metrics)
        self.clock = StreamClock(settings.speed)
        # a segment is 16 kB (2 s) to 80 kB (10 s) of JSON, over aiokafka's 16 kB default batch,
        # so each went out in a produce request of its own; 512 kB lets the sender group what
        # queues while a request is in flight (under Kafka's 1 MB message.max.bytes default)
        self.producer = QueuedProducer(k.partitions, self.kafka_kwargs, k.idempotence, acks="all",
                                       linger_ms=k.linger_ms, max_batch_size=512 * 1024)
        self.registry = Registry(self.producer, k.topic_registry, k.partitions)
        self.publisher = Publisher(self.producer, self.registry, k, list(sinks or []), self.metrics)
        self.streams = Streams(settings, model, self.clock, self.batcher, self.publisher, self.generator.context,
                                self.metrics, on_end=lambda pid: self.events.stream_ended(pid))
        self.events = EventHandler(settings, model, self.registry, self.streams, self.publisher,
                                   References(settings, model), self.clock, self.producer, self.metrics, self.lock)
        self.partitions = Partitions(settings, self.registry, self.streams, self.clock, self.health, self.lock)
        self.watch = BrokerWatch(self.kafka_kwargs, k.topic_specs(), self.registry, settings.broker_check_s,
                                 self.health.broker_lost)
        self.consumer = AIOKafkaConsumer(group_id=k.group_id, enable_auto_commit=False,
                                         auto_offset_reset="earliest", **k.consumer_kwargs())
        self._task: asyncio.Task | None = None  # the consume loop, once started

    # ---- life cycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Create missing topics, connect, and join the consumer group (partitions follow)."""
        k = self.topics
        backend, device = log_choice(self.model, self.settings)
        self.metrics.backend.labels(backend, device).set(1)
        await ensure_topics(self.kafka_kwargs, k.topic_specs(), k.replication_factor, k.connect_timeout_s)
        await self.producer.start()
        log.info("idempotent producer: %s", "on" if self.producer.idempotent else "off (the brokers give no producer ids)")
        self.watch.start()
        self.batcher.start()
        self.consumer.subscribe([k.topic_events], listener=self.partitions)
        await self.consumer.start()
        self._task = asyncio.create_task(self._consume(), name="events")

    async def stop(self) -> None:
        """Graceful: stop consuming, finish in-flight publishes, commit, close."""
        self.partitions.closing = True
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.events.stop()
        await self.streams.stop_where(lambda pid: False)
        await self.batcher.stop()
        await self.watch.stop()
        await self.consumer.stop()  # commits nothing new: every handled batch was committed
        await self.producer.flush()
        await self.producer.stop()

    @property
    def ready(self) -> asyncio.Event:
        """Set while this worker serves restored partitions (readiness)."""
        return self.health.ready

    @property
    def failed(self) -> asyncio.Event:
        """Set once this worker cannot go on; ``failure`` says why (the process exits)."""
        return self.health.failed

    @property
    def failure(self) -> str | None:
        return self.health.failure

    @property
    def lost(self) -> str | None:
        return self.health.lost

    def fail(self, reason: str) -> None:
        self.health.fail(reason)

    def unhealthy(self) -> str | None:
        """Why this worker should be restarted (liveness), or None."""
        if self.health.failure is not None:
            return self.health.failure
        if self._task is not None and not self.batcher.alive:
            return "the generation batcher stopped"
        return None

    # ---- events -------------------------------------------------------------------------
    async def _consume(self) -> None:
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
        batch = await self.consumer.getmany(timeout_ms=200, max_records=500)
        if not batch:
            return
        owned = self.partitions.owned
        async with self.lock:
            todo = [(tp, msgs) for tp, msgs in batch.items() if msgs]
            for i, (tp, msgs) in enumerate(todo):
                if tp.partition not in owned:
                    continue  # revoked meanwhile: its new owner re-reads from the commit
                first_staged = current = None  # offsets: first event with a write in flight, event at hand
                try:
                    for m in msgs:
                        current, staged = m.offset, self.events.staged
                        await self.events.handle(m)
                        if first_staged is None and self.events.staged > staged:
                            first_staged = m.offset
                    current = None
                    await self.events.confirm_writes()
                    crash_point("events-durable")
                except KafkaError:
                    self.events.drop_writes()
                    self.consumer.seek(tp, min(o for o in (first_staged, current) if o is not None))
                    for later, later_msgs in todo[i + 1:]:
                        if later.partition in owned:
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

    # ---- requests from the HTTP API and CLI ----------------------------------------------------
    @property
    def held(self) -> dict[str, str]:
        """Restored patients not streamed, and why."""
        return self.streams.held

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
        """What the HTTP API shows of one patient, or None if it is not here."""
        p = self.registry.get(pid)
        stream = self.streams.get(pid)
        if p is None:
            return None
        # whether its beats are drawn on a schedule (and published), and if not, why not
        rhythm = None if stream is None else {"drawn": stream.draws_rhythms, "problem": stream.rhythm_problem}
        return {**p.view(stream.seconds if stream else None), "held": self.held.get(pid), "rhythm_layer": rhythm}

    def why_unknown(self, pid: str) -> str:
        """A patient of another worker's partitions is not unknown, only not here: say so."""
        part = partition_of(pid, self.topics.partitions)
        owned = self.partitions.owned
        if part in owned:
            return "unknown patient"
        return (f"patient {pid!r} would be on partition {part}, which this worker does not serve "
                f"(it serves {sorted(owned)}); `twin-engine monitor` shows every patient")

    async def send_event(self, ev: Event) -> None:
        """Publish an event to the events topic: the same path as any producer's events."""
        await self.send_events([ev])

    async def send_events(self, events: Iterable[Event]) -> None:
        """Publish many events and wait once for all of them: a ward of thousands onboards in one
        producer batch, not one broker round trip each behind the streams already running."""
        await send_events(self.producer, self.topics.topic_events, events)
