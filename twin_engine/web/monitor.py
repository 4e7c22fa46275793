"""The read side of a deployment: every patient, whichever worker streams it.

A worker knows only the patients of its partitions, so with several workers neither its page nor
its API shows the whole ward. A monitor reads the deployment's topics instead (no consumer
group: every partition, and nothing it does moves a worker's offsets): the registry changelog
from the beginning, for the patients and their states; the segments and annotations from now
on, relayed to its WebSocket subscribers without decoding them. Writes become events on the
events topic, as from a worker's API. It loads no model and touches no accelerator, so it
scales apart from the workers: one or more behind a load balancer, each reading everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from models.conditions import VOCAB
from stream.events import Event
from stream.kafka.producer import send_events
from stream.kafka.topics import ensure_topics
from stream.segments import Annotation
from stream.subscribers import SubscriberHub
from twin_engine.config import Settings
from twin_engine.metrics import MonitorMetrics
from twin_engine.registry import Patient, apply_record
from twin_engine.web.dashboard import page_hello

log = logging.getLogger(__name__)
YIELD_EVERY = 16  # records relayed between turns of the subscribers' writers (their queues hold 64)


def model_meta(model_path: Path) -> tuple[tuple[str, ...], int]:
    """Vocabulary and sampling rate of the model the workers serve, from its config.json (the
    monitor validates events against the same vocabulary without loading the model)."""
    try:
        meta = json.loads((Path(model_path) / "config.json").read_text())["meta"]
        return tuple(meta["vocab"]), int(meta["fs"])
    except (OSError, KeyError, TypeError, ValueError) as exc:
        log.warning("no model meta at %s (%s); using the default vocabulary", model_path, exc)
        return VOCAB, 250


class Monitor:
    """Implements ``twin_engine.web.http_api.Frontend`` from the topics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = MonitorMetrics()
        self.vocab, self.fs = model_meta(settings.model_path)
        self.hub = SubscriberHub(max_clients=settings.ws_max_clients, max_subscription=settings.ws_max_subscription,
                                 metrics=self.metrics, hello=page_hello(settings, self.vocab))
        self.patients: dict[str, Patient] = {}
        self.ready = asyncio.Event()
        self.kafka_kwargs = settings.kafka.client_kwargs()
        self.producer: AIOKafkaProducer | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        k = self.settings.kafka
        await ensure_topics(self.kafka_kwargs, k.topic_specs(), k.replication_factor, k.connect_timeout_s)
        self.producer = AIOKafkaProducer(acks="all", **self.kafka_kwargs)
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(enable_auto_commit=False, **k.consumer_kwargs())
        await self.consumer.start()
        live, registry = [], []
        for topic, out in ((k.topic_segments, live), (k.topic_annotations, live), (k.topic_registry, registry)):
            parts = self.consumer.partitions_for_topic(topic) or await self._partitions(topic)
            out.extend(TopicPartition(topic, p) for p in sorted(parts))
        self.consumer.assign(live + registry)
        await self.consumer.seek_to_end(*live)
        await self.consumer.seek_to_beginning(*registry)
        ends = await self.consumer.end_offsets(registry)
        self._task = asyncio.create_task(self._read({tp: n for tp, n in ends.items() if n > 0}), name="monitor")

    async def _partitions(self, topic: str, attempts: int = 20) -> set[int]:
        """The topic's partitions, once the metadata has them (a topic just created may take a
        moment to appear)."""
        assert self.consumer is not None
        for _ in range(attempts):
            await self.consumer.topics()  # refreshes the metadata of every topic
            parts = self.consumer.partitions_for_topic(topic)
            if parts:
                return parts
            await asyncio.sleep(0.25)
        raise RuntimeError(f"topic {topic} has no partitions")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.hub.close()
        for client in (self.consumer, self.producer):
            if client is not None:
                await client.stop()

    async def _read(self, registry_ends: dict[TopicPartition, int]) -> None:
        """Follow the topics; ready once the registry is read to where it ended at start."""
        assert self.consumer is not None
        k = self.settings.kafka
        if not registry_ends:
            self.ready.set()
        while True:
            try:
                batch = await self.consumer.getmany(timeout_ms=500, max_records=2000)
            except KafkaError as exc:  # the broker unreachable past the client's own retries
                log.error("reading the topics failed (%s: %s); retrying in 1 s", exc.__class__.__name__, exc)
                await asyncio.sleep(1.0)
                continue
            for tp, msgs in batch.items():
                self.metrics.records.labels(tp.topic).inc(len(msgs))
                for i, m in enumerate(msgs):
                    if i % YIELD_EVERY == YIELD_EVERY - 1:
                        # let the subscribers' writers drain their queues: a fetch holds hundreds
                        # of segments, and offered all at once they would overflow a queue
                        # (and be dropped as if the subscriber were slow)
                        await asyncio.sleep(0)
                    pid = m.key.decode(errors="replace") if m.key is not None else None
                    if pid is None:
                        continue
                    if tp.topic == k.topic_segments and m.value is not None:
                        self.hub.relay_segment(pid, m.value)
                    elif tp.topic == k.topic_annotations and m.value is not None:
                        with contextlib.suppress(ValueError, TypeError, KeyError):
                            await self.hub.annotation(Annotation.from_json(m.value))
                    elif tp.topic == k.topic_registry:
                        await self._registry_record(pid, m.value, m.offset)
            if registry_ends:  # by position, not the last record: compaction leaves gaps at the end
                for tp in [tp for tp in registry_ends if await self.consumer.position(tp) >= registry_ends[tp]]:
                    del registry_ends[tp]
                if not registry_ends:
                    log.info("registry read: %d patients", len(self.patients))
                    self.ready.set()
            self.metrics.patients.set(len(self.patients))

    async def _registry_record(self, key: str, value: bytes | None, offset: int) -> None:
        """A patient (or its tombstone) or its stream position; the monitor keeps what the API
        shows, not what a restart needs (no base vector, no tail)."""
        known = self.patients.get(key) is not None
        table: dict[str, Patient | None] = self.patients  # type: ignore[assignment]  # a None is deleted below
        try:
            applied = apply_record(table, key.encode(), value)
        except (ValueError, TypeError, AttributeError) as exc:
            log.error("skipping unreadable registry record %s@%d: %s", key, offset, exc)
            return
        if applied.removed:
            del self.patients[applied.patient_id]
            if known:
                await self.hub.removed(applied.patient_id)
        elif (p := self.patients.get(applied.patient_id)) is not None:
            p.base_vector, p.seen_events, p.tail_b64 = [], [], None

    # ---- Frontend ------------------------------------------------------------------------
    def patient_ids(self) -> list[str]:
        return sorted(self.patients)

    def patient_view(self, pid: str) -> dict | None:
        p = self.patients.get(pid)
        return None if p is None else p.view(self.settings.segment_seconds)

    def why_unknown(self, pid: str) -> str:
        return "unknown patient"

    def unhealthy(self) -> str | None:
        """Why this monitor should be restarted (its reader stopped), or None."""
        return "the topic reader stopped" if self._task is not None and self._task.done() else None

    async def send_event(self, ev: Event) -> None:
        assert self.producer is not None
        await send_events(self.producer, self.settings.kafka.topic_events, [ev])
