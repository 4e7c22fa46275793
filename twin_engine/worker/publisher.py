"""Publishing a stream's segment: its annotations (state intervals; beats and rhythm episodes
where the rhythm layer drew it), the segment itself, then its position, to the topics and to
every sink, one fan-out."""

from __future__ import annotations

import asyncio

from models.rhythm import MIT_RHYTHM, Beat, Episode
from models.rhythm.beats import UNANNOTATED
from stream.kafka.producer import QueuedProducer, delivered
from stream.segments import (
    ArtifactRecord,
    BeatsRecord,
    GroundTruth,
    RhythmRecord,
    Segment,
    annotation,
)
from twin_engine.config import KafkaConfig
from twin_engine.crash_points import crash_point
from twin_engine.metrics import Metrics
from twin_engine.registry import Patient, Registry
from twin_engine.worker.sinks import Sink
from twin_engine.worker.timeline import StateChange


class Publisher:
    """Sends segments and annotations to Kafka and the sinks, and moves the stream position.

    Args:
        producer: the worker's producer.
        registry: where the stream position is written once the records are out.
        topics: the deployment's topic names.
        sinks: the other places segments go (WebSocket hub, WFDB export).
        metrics: ``published`` counts segments out.
    """

    def __init__(self, producer: QueuedProducer, registry: Registry, topics: KafkaConfig, sinks: list[Sink],
                 metrics: Metrics) -> None:
        self.producer, self.registry, self.topics = producer, registry, topics
        self.sinks, self.metrics = sinks, metrics

    async def annotate(self, p: Patient, ann: GroundTruth) -> asyncio.Future:
        """Queue the annotation; returns its delivery future (the caller awaits it)."""
        future = await self.producer.send(self.topics.topic_annotations, ann.to_json(), key=p.patient_id.encode())
        for sink in self.sinks:
            await sink.annotation(ann)
        return future

    async def close_annotation(self, p: Patient, end_time: float) -> None:
        """End the patient's open state interval and rhythm episode at ``end_time`` (its stream
        is ending)."""
        if p.published_rhythm is not None:
            await (await self._end_rhythm(p, end_time))
            p.published_rhythm = None
        if p.published_since is not None:
            await (await self.annotate(p, annotation(p.patient_id, p.published_event_id, p.published_state or {},
                                                     p.published_since, p.next_seq, end_time)))
            p.published_since = None  # closed: a removal applied again (its delete failed) adds no second end

    async def removed(self, patient_id: str) -> None:
        for sink in self.sinks:
            await sink.removed(patient_id)

    async def _end_rhythm(self, p: Patient, end_time: float) -> asyncio.Future:
        """Queue the record that closes the patient's open rhythm episode at ``end_time``."""
        name, since = p.published_rhythm
        return await self.annotate(p, RhythmRecord(p.patient_id, name, MIT_RHYTHM.get(name, ""), since, end_time))

    async def _truth(self, p: Patient, seg: Segment, beats: list[Beat] | None, episodes: list[Episode],
                     artifacts: list[ArtifactRecord] = ()) -> list:
        """The rhythm episodes the segment opens (closing the one before), the artifacts that begin
        in it, and its beats. A segment drawn without beats (``beats`` None: its morphology gave
        no bank) has no beats record; from the first such segment an ``unannotated`` episode
        says so, until beats come back."""
        futures = []
        if beats is None:
            episodes = [Episode(UNANNOTATED, seg.start_time)]
        for e in sorted(episodes, key=lambda e: e.start):
            if p.published_rhythm is not None and p.published_rhythm[0] == e.rhythm:
                continue
            if p.published_rhythm is not None:
                futures.append(await self._end_rhythm(p, e.start))
            p.published_rhythm = [e.rhythm, e.start]
            futures.append(await self.annotate(p, RhythmRecord(p.patient_id, e.rhythm, e.aux, e.start)))
        if beats is not None:
            n = len(seg.samples)
            marks = tuple((min(n - 1, max(0, int(round((b.time - seg.start_time) * seg.fs)))), b.symbol)
                          for b in beats)
            futures.append(await self.annotate(p, BeatsRecord(p.patient_id, seg.seq, seg.start_time, seg.fs, marks)))
        return futures + [await self.annotate(p, a) for a in artifacts]

    async def publish(self, p: Patient, seg: Segment, change: StateChange | None,
                      truth: tuple[list[Beat] | None, list[Episode], list[ArtifactRecord]] | None = None) -> None:
        """Out once this returns: the segment, its annotations and the stream position are all
        acknowledged by the broker. If any is not, this raises; the stream puts its position back
        (``Patient.set_position``) and sends the segment again (at least once), rather than
        moving on past a record the broker never took."""
        futures = []
        if p.published_since is None or seg.event_id != p.published_event_id or seg.state != p.published_state:
            if p.published_since is not None:
                futures.append(await self.annotate(p, annotation(
                    p.patient_id, p.published_event_id, p.published_state or {}, p.published_since, p.next_seq - 1,
                    seg.start_time)))
            p.published_event_id, p.published_state, p.published_since = seg.event_id, seg.state, seg.start_time
            futures.append(await self.annotate(p, annotation(p.patient_id, seg.event_id, seg.state,
                                                               seg.start_time, seg.seq)))
        if truth is not None:  # drawn by the rhythm layer: its beats, episodes and artifacts
            futures += await self._truth(p, seg, *truth)
        futures.append(await self.producer.send(self.topics.topic_segments, seg.to_json(), key=p.patient_id.encode()))
        crash_point("segment-sent")
        for sink in self.sinks:
            await sink.segment(seg)
        # the position moves on only once the broker has the records: a restart after a failure
        # here resumes at this segment, not past it
        await delivered(futures)
        crash_point("segment-acked")
        await self.registry.put_position(p)
        self.metrics.published.inc()
