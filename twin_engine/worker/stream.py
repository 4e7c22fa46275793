"""Per-patient segment streams: generate ahead, publish on time, re-plan on a state change.

Each live patient has one ``PatientStream`` task. It keeps up to ``lookahead`` generated segments
pending (each continuing the one before), publishes the oldest when its start time comes on the
``StreamClock``, and on a state change drops what is pending, so the change takes effect from the
next segment not yet published. Generation itself goes through the shared micro-batcher.

States follow event time: each change has a stream time from which it holds (its
``effective_time``, or the next segment not yet published), and a segment gets the state of the
last change at or before its start. Changes scheduled ahead therefore all happen, in the order of
their times, whatever order they arrive in: a change for now does not cancel one scheduled later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.amplitude import to_mv
from models.conditions import CardiacState
from models.rhythm import Beat, Episode, Rhythm
from models.rhythm.render import BankError
from models.rhythm.track import RhythmTrack
from models.stress.artifacts import Artifact, ArtifactError, Drawn
from stream.events import state_to_dict
from stream.segments import ArtifactRecord, Segment
from twin_engine.metrics import Metrics
from twin_engine.registry import Patient
from twin_engine.worker.batcher import MicroBatcher
from twin_engine.worker.clock import StreamClock
from twin_engine.worker.generator import (
    GenRequest,
    extend_tail,
    pack_tail,
    patient_seed,
    unpack_tail,
)
from twin_engine.worker.rhythm import StreamRhythm
from twin_engine.worker.timeline import StateChange, Timeline

log = logging.getLogger(__name__)
PUBLISH_RETRY_S = 1.0  # after a failed publication (broker unreachable past the producer's own retries)


@dataclass
class Pending:
    seq: int
    samples: np.ndarray
    state: CardiacState
    event_id: str | None
    tail: np.ndarray  # the stream's last context samples once this segment is out
    # what the model's last window produced beyond this segment, continuing it in the same
    # state: the next segment starts from it instead of discarding a third of every window
    spare: np.ndarray | None = None
    # drawn by the rhythm layer: its ground truth (beats, rhythm episodes, the artifacts that
    # begin in it; beats None where its morphology gave no bank), and the track once it is out
    truth: tuple[list[Beat] | None, list[Episode], list[ArtifactRecord]] | None = None
    track: RhythmTrack | None = None


PublishFn = Callable[[Patient, Segment, StateChange | None,
                     tuple[list[Beat] | None, list[Episode], list[ArtifactRecord]] | None], Awaitable[None]]


class PatientStream:
    def __init__(self, patient: Patient, *, clock: StreamClock, batcher: MicroBatcher, fs: int,
                 segment_samples: int, context_samples: int, lookahead: int, leads: tuple[str, ...],
                 model_version: str, publish: PublishFn, metrics: Metrics,
                 on_end: Callable[[], None] | None = None, rhythm: StreamRhythm | None = None,
                 nstdb: Path | None = None) -> None:
        self.p = patient
        # the rhythm layer draws the segments (None: off; ``rhythm_problem`` says why the last one
        # made could not be: its morphology gave no bank)
        self.rhythm = rhythm
        self.rhythm_problem: str | None = None if rhythm is not None else "the rhythm layer is off"
        self._track_out: RhythmTrack | None = None  # the track after the last segment published
        # a scheduled end (stream time, the patient's ``remove_at``): segments starting at or
        # after it are not published, and once the last one before it has played out, ``on_end``
        # runs (in this stream's task, which then ends)
        self.on_end = on_end
        self.clock, self.batcher, self.fs = clock, batcher, fs
        self.n, self.context, self.lookahead = segment_samples, context_samples, lookahead
        self.leads, self.model_version, self.publish, self.metrics = leads, model_version, publish, metrics
        self.pending: deque[Pending] = deque()
        self.published: Pending | None = None  # the last segment out, with its spare samples
        # which state each segment is in (its start time: this stream's, whose origin may move)
        self.timeline = Timeline((patient.cardiac_state, patient.state_event_id), self.start_time, self.seconds)
        self.base = patient.base()  # fixed for the stream's life: re-registration starts a new one
        # the model works in z-scores (and keeps its tail in them); segments go out in mV
        self.mv_scale = np.asarray(patient.mv_scale if patient.mv_scale is not None else [1.0] * len(leads),
                                   np.float32)
        self.nstdb = nstdb
        self._drawn: dict[str, Drawn | None] = {}  # each artifact made once (None: it could not be)
        # the stream task's one alarm: a state change, a moved end or stop; ``_stale`` says the
        # segments made ahead are in an old state
        self._wake = asyncio.Event()
        self._stale = False
        self._stopping = False
        self._gen: asyncio.Task | None = None
        self.task: asyncio.Task | None = None
        if patient.stream_start is None:
            # a new stream begins one segment from now: its first segment is due only once it
            # could have been generated (a burst of registrations otherwise starts late)
            patient.stream_start = clock.anchor() + (self.seconds if clock.speed else 0.0)
        else:
            if patient.segment_seconds is not None and abs(patient.segment_seconds - self.seconds) > 1e-9:
                # the segment length changed since the stream last ran: its next segment still
                # starts where the last one ended (counted in the new length, it would start
                # next_seq x the difference away, hours ahead after a day of segments)
                patient.stream_start = float(patient.stream_start) + patient.next_seq * (
                    patient.segment_seconds - self.seconds)
            if clock.speed and self.start_time(patient.next_seq) < clock.now() - lookahead * self.seconds:
                # restored after downtime: continue the sequence from now rather than replaying the gap
                patient.stream_start = clock.now() - patient.next_seq * self.seconds
            self.timeline.restore(self.p.history, self.p.next_seq)
        patient.segment_seconds = self.seconds

    @property
    def seconds(self) -> float:
        return self.n / self.fs

    def start_time(self, seq: int) -> float:
        return float(self.p.stream_start) + seq * self.seconds

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"stream-{self.p.patient_id}")

    def end_moved(self) -> None:
        """The patient's ``remove_at`` changed: wake the stream, which may be waiting out what it
        took for its last segment, or holding segments beyond a new, earlier end."""
        self._wake.set()

    def ended_before(self, seq: int) -> bool:
        """Whether segment ``seq`` starts at or after the stream's scheduled end."""
        end = self.p.remove_at
        return end is not None and self.start_time(seq) >= end - 1e-9

    async def stop(self) -> None:
        """Finish the publish in progress (if any), then end."""
        self._stopping = self._stale = True
        self._wake.set()
        if self.task:
            await asyncio.gather(self.task, return_exceptions=True)

    @property
    def changes(self) -> list[StateChange]:
        return self.timeline.changes

    @property
    def change(self) -> StateChange | None:
        """The last change received."""
        return self.timeline.last

    def change_state(self, change: StateChange) -> float:
        """Schedule ``change`` (the service calls this as it applies the event); returns the
        stream time it holds from: its effective time, but never before the next segment not yet
        published (what is out cannot change)."""
        at = self.timeline.schedule(change, self.p.next_seq)
        self._stale = True
        self._wake.set()
        return at

    def artifacts_changed(self) -> None:
        """An artifact was scheduled: the segments made ahead are made again with it."""
        self._stale = True
        self._wake.set()

    async def _artifacts(self, x: np.ndarray, t0: float) -> tuple[np.ndarray, list[ArtifactRecord]]:
        """``x`` (the window from stream time ``t0``) with the patient's artifacts drawn on it, and
        the records of those that begin in it. Each artifact is made in a thread (its whole
        waveform is measured for the SNR: up to 600 s of it), off the loop every stream shares."""
        end, opened = t0 + len(x) / self.fs, []
        for entry in self.p.artifacts:
            if entry["end"] <= t0 or entry["start"] >= end:
                continue
            key = entry["event_id"]
            if key not in self._drawn:
                try:
                    self._drawn[key] = await asyncio.to_thread(Drawn, Artifact.from_dict(entry), self.fs,
                                                               self.rhythm.qrs_power, int(entry["seed"]), self.nstdb)
                except ArtifactError as exc:  # a damaged record, or NSTDB noise without its folder
                    log.error("%s: artifact %s not drawn: %s", self.p.patient_id, key, exc)
                    self._drawn[key] = None
            drawn = self._drawn[key]
            if drawn is None:
                continue
            x = drawn.draw(x, t0).astype(np.float32)
            if t0 <= entry["start"] < end:
                a = drawn.a
                opened.append(ArtifactRecord(self.p.patient_id, key, a.kind, a.start, a.end, a.named_leads(self.leads),
                                             a.snr))
        live = {e["event_id"] for e in self.p.artifacts}
        self._drawn = {k: v for k, v in self._drawn.items() if k in live}
        return x, opened

    @property
    def draws_rhythms(self) -> bool:
        """Whether the stream draws named rhythms (the rhythm layer on, and able to in the
        morphology of the last segment made)."""
        return self.rhythm is not None and self.rhythm_problem is None

    def named_rhythm(self, event_id: str | None) -> Rhythm | None:
        """The rhythm event ``event_id`` named, if it named one."""
        for c in self.timeline.changes:
            if c.event_id == event_id:
                return c.rhythm
        for h in reversed(self.p.history):
            if h.event_id == event_id:
                return h.named_rhythm()
        return None

    def state_for(self, seq: int) -> CardiacState:
        return self.timeline.state_and_event(seq)[0]

    async def _generate(self, seq: int, prev: Pending | None) -> Pending:
        """Segment ``seq``, continuing ``prev`` (the last segment generated) or the stored tail.
        The model works in whole windows; samples past the segment are kept as ``spare`` and used
        first by the next segment if its state is the same (a change or a ramp step drops them)."""
        state, event_id = self.timeline.state_and_event(seq)
        tail = prev.tail if prev is not None else unpack_tail(self.p.tail_b64, len(self.leads))
        if self.rhythm is not None:
            try:
                x, beats, episodes = await self.rhythm.window(self.start_time(seq), self.n, state, event_id,
                                                              self.named_rhythm(event_id),
                                                              self.clock.due(self.start_time(seq)))
                x, opened = await self._artifacts(x, self.start_time(seq))
                self.rhythm_problem = None
                return Pending(seq, x, state, event_id, extend_tail(tail, x, self.context), None,
                               (beats, episodes, opened), self.rhythm.track.copy())
            except BankError as exc:
                # only while the stream is in a morphology whose bank could not be cut: the
                # model's own windows, without beats; a later state's bank brings the beats back
                if self.rhythm_problem != str(exc):
                    log.warning("%s: no beats in this morphology, the model's own windows instead: %s",
                                self.p.patient_id, exc)
                self.rhythm_problem = str(exc)
                self.rhythm.lapse()
        spare = prev.spare if prev is not None and (prev.state, prev.event_id) == (state, event_id) else None
        have = np.zeros((0, len(self.leads)), np.float32) if spare is None else spare
        if len(have) < self.n:
            req = GenRequest(self.base, state, extend_tail(tail, have, self.context) if len(have) else tail,
                             self.n - len(have), patient_seed(self.p.patient_id, seq))
            have = np.concatenate([have, await self.batcher.submit(req, self.clock.due(self.start_time(seq)))])
        samples = have[:self.n]
        truth = None
        if self.rhythm is not None:  # no beats: its open rhythm episode ends there
            opened = []
            if self.rhythm.qrs_power is not None:  # artifacts at their SNR to the last bank's QRS
                samples, opened = await self._artifacts(samples, self.start_time(seq))
            truth = (None, [], opened)
        return Pending(seq, samples, state, event_id, extend_tail(tail, samples, self.context),
                       have[self.n:] if len(have) > self.n else None, truth)

    async def _run(self) -> None:
        try:
            while not self._stopping:
                seq = self.p.next_seq + len(self.pending)
                if self._gen is None and len(self.pending) < self.lookahead and not self.ended_before(seq):
                    prev = self.pending[-1] if self.pending else self.published
                    self._gen = asyncio.create_task(self._generate(seq, prev))
                if self._gen is None and not self.pending and self.ended_before(self.p.next_seq):
                    wait = self.clock.due(self.start_time(self.p.next_seq)) - time.monotonic()
                    if wait > 0:  # the end comes once the last segment has played out
                        await self._wake_within(wait)
                        self._stale = False  # stopping, a moved end, or a change no segment will carry
                        continue
                    if self.on_end is not None:
                        self.on_end()
                    return
                timeout = None
                if self.pending:
                    timeout = max(0.0, self.clock.due(self.start_time(self.pending[0].seq)) - time.monotonic())
                await self._wake_within(timeout, self._gen)
                if self._stale:
                    self._stale = False
                    self.pending.clear()
                    self.published = None  # its spare samples are in the old state
                    if self._gen is not None:
                        self._gen.cancel()
                        await asyncio.gather(self._gen, return_exceptions=True)
                        self._gen = None
                    if self.rhythm is not None:  # the schedule goes on from what is out
                        self.rhythm.track = None if self._track_out is None else self._track_out.copy()
                    continue
                if self._gen is not None and self._gen.done():
                    gen, self._gen = self._gen, None
                    if gen.exception() is not None:
                        log.error("generation failed for %s: %s", self.p.patient_id, gen.exception())
                        await asyncio.sleep(1.0)
                        continue
                    self.pending.append(gen.result())
                if self.pending and self.ended_before(self.pending[0].seq):
                    self.pending.clear()  # made before the end was scheduled: never published
                    continue
                if self.pending and time.monotonic() >= self.clock.due(self.start_time(self.pending[0].seq)):
                    item = self.pending.popleft()
                    try:
                        await self._publish(item)
                    except Exception as exc:  # Kafka or a sink failed: keep the segment, try again
                        self.pending.appendleft(item)
                        self.metrics.publish_failures.inc()
                        log.error("publishing %s seq %d failed (%s: %s); retrying in %.1f s", self.p.patient_id,
                                  item.seq, exc.__class__.__name__, exc, PUBLISH_RETRY_S)
                        await asyncio.sleep(PUBLISH_RETRY_S)
        finally:
            if self._gen is not None:
                self._gen.cancel()
                with contextlib.suppress(BaseException):
                    await self._gen

    async def _wake_within(self, timeout: float | None, gen: asyncio.Task | None = None) -> None:
        """Sleep until ``timeout``, a state change, a moved end, stop or ``gen`` finishing."""
        if self._stale or self._stopping:
            return  # came during this pass (a publication awaits): the loop handles it first
        self._wake.clear()  # the loop looks at the state changes and ``remove_at`` after every wake
        waiter = asyncio.ensure_future(self._wake.wait())
        await asyncio.wait({waiter, gen} if gen is not None else {waiter}, timeout=timeout,
                           return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            waiter.cancel()

    async def _publish(self, item: Pending) -> None:
        lateness = time.monotonic() - self.clock.due(self.start_time(item.seq))
        if item.seq == 0 and self.clock.speed and lateness > 0:
            # a new stream starts when its first segment is ready: after a burst of
            # registrations the first segments queue behind each other, and nothing downstream
            # has seen this stream's clock yet (later segments keep the new origin)
            self.p.stream_start = float(self.p.stream_start) + lateness * self.clock.speed
            lateness = 0.0
        if self.clock.speed and lateness > 0.25 * self.seconds / self.clock.speed:
            self.metrics.deadline_misses.inc()
        if self.clock.speed:
            self.metrics.lag.set(max(0.0, lateness))
        seg = Segment(self.p.patient_id, item.seq, self.start_time(item.seq), self.fs, self.leads,
                      to_mv(item.samples, self.mv_scale), state_to_dict(item.state), item.event_id,
                      self.model_version)
        change = next((c for c in self.changes if c.event_id == item.event_id), None)
        if change is not None and change.first_seq is None:
            change.first_seq, change.published = item.seq, time.monotonic()
            # from receiving the event, or from when its effective time came if that was later
            due = self.clock.due(change.effective_time) if change.effective_time is not None else change.received
            self.metrics.event_to_effect.observe(change.published - max(change.received, due))
        before = self.p.position(), self.published
        self.p.tail_b64 = pack_tail(item.tail)
        if self.rhythm is not None:  # a segment without beats (``StreamRhythm.lapse``) ends the schedule
            self.p.rhythm_state = None if item.track is None else item.track.to_dict()
        self.published = item
        self.p.next_seq = item.seq + 1
        try:
            await self.publish(self.p, seg, change, item.truth)
            self.timeline.settle(self.p.next_seq)
            self._track_out = item.track
        except Exception:
            # not out (or not durably): the whole stream position, the state last published
            # included, stays where it was, and the retry sends this segment and its annotations
            # again (at least once: a consumer may see a sequence number twice)
            position, self.published = before
            self.p.set_position(position)
            raise
