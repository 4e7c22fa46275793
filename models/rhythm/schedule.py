"""A stream's beats, window by window: rhythm requests in, beats and rhythm episodes out.

The rhythm in effect at a time is the last request at or before it; a request with a
``duration`` holds that long, then the rhythm before it resumes (a pause holds until its one
long RR is over). Each beat's random generator is seeded by (stream seed, beat number), so the
beats are the same however the stream is cut into windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.rhythm.beats import Beat, Episode
from models.rhythm.programs import RHYTHMS, Rhythm

RECENT = 8  # beat classes kept for the patterns (couplets, bigeminy, trigeminy)


@dataclass(frozen=True)
class _Request:
    at: float
    rhythm: Rhythm
    until: float | None  # a timed request's end (None: until the next one)


def episode_name(rhythm: Rhythm) -> str:
    """The rhythm an episode records: bigeminy and trigeminy are rhythms of their own in MIT-BIH."""
    return rhythm.pattern if rhythm.name == "pvc" and rhythm.pattern in ("bigeminy", "trigeminy") else rhythm.name


class BeatSchedule:
    """Beats of one stream from ``start`` on.

    Args:
        rhythm: the rhythm from the stream's start.
        start: stream time of the stream's start (seconds).
        seed: the stream's seed (the patient's).
    """

    def __init__(self, rhythm: Rhythm, start: float, seed: int) -> None:
        self.start, self.seed = start, seed & 0x7FFFFFFF
        self._requests = [_Request(start, rhythm.validated(), None)]
        self._cursor = start  # no beat is still to come before this time
        self._last: Beat | None = None
        self._recent: list[str] = []
        self._count = 0
        self._pending: Beat | None = None  # made, after the last window asked for

    @property
    def cursor(self) -> float:
        """No beat is still to come before this stream time."""
        return self._cursor

    @property
    def last(self) -> Beat | None:
        """The last beat handed out."""
        return self._last

    def request(self, rhythm: Rhythm, at: float) -> None:
        """From stream time ``at`` on, ``rhythm`` (validated here: RhythmError if it cannot be).
        The past stays: ``at`` before the last beat handed out is moved to it."""
        rhythm = rhythm.validated()
        at = max(at, self._cursor)
        spec = RHYTHMS[rhythm.name]
        until = at + rhythm.duration if rhythm.duration is not None and not spec.one_beat else None
        self._requests = [q for q in self._requests if q.at <= at] + [_Request(at, rhythm, until)]
        self._pending = None

    def rhythm_at(self, t: float) -> tuple[Rhythm, float]:
        """The rhythm in effect at ``t`` and when it began."""
        held: list[_Request] = []  # the requests in effect, newest last; a timed one ends on its own
        for q in self._requests:
            if q.at > t:
                break
            if q.until is None:
                held = [q]
            else:
                held.append(q)
        while len(held) > 1 and held[-1].until is not None and held[-1].until <= t:
            ended = held.pop()
            held[-1] = _Request(max(held[-1].at, ended.until), held[-1].rhythm, held[-1].until)
        q = held[-1]
        return q.rhythm, q.at

    def _next_change(self, t: float) -> float | None:
        times = [q.at for q in self._requests if q.at > t] + [q.until for q in self._requests
                                                              if q.until is not None and q.until > t]
        return min(times) if times else None

    def beats(self, until: float) -> list[Beat]:
        """The beats before stream time ``until`` not handed out yet, in time order."""
        out: list[Beat] = []
        while self._cursor < until:
            beat = self._pending or self._make(until)
            if beat is None:
                continue  # a stretch without beats: the cursor moved on
            if beat.time >= until:
                self._pending = beat
                break
            self._pending = None
            out.append(beat)
            self._hand_out(beat)
        return out

    def _make(self, until: float) -> Beat | None:
        t = self._cursor
        rhythm, began = self.rhythm_at(t)
        spec = RHYTHMS[rhythm.name]
        since = self._last.time if self._last is not None else began
        beat = spec.program(rhythm, since, self._last, self._recent,
                            np.random.default_rng((self.seed, self._count)))
        change = self._next_change(t)
        if beat is None:  # no beats until the next change (or past this window)
            self._cursor = until if change is None or change > until else change
            return None
        if beat.time <= t:  # the rhythm began after the beat it would have made: its first beat now
            beat = Beat(t + 1e-6 if self._last is not None and t <= self._last.time else t, beat.kind)
        if change is not None and beat.time > change and not spec.one_beat:
            self._cursor = change  # made by the rhythm in effect then
            return None
        return beat

    def _hand_out(self, beat: Beat) -> None:
        # the cursor is still where the beat was made from (a pending beat keeps it there)
        rhythm, began = self.rhythm_at(self._cursor)
        if RHYTHMS[rhythm.name].one_beat:  # a pause is over with its beat: the rhythm before it goes on
            self._requests = [q for q in self._requests if q.at != began or q.rhythm != rhythm]
            prev, _ = self.rhythm_at(began)
            self._requests = [q for q in self._requests if q.at <= beat.time] + [_Request(beat.time, prev, None)] + \
                [q for q in self._requests if q.at > beat.time]
        self._last, self._count = beat, self._count + 1
        self._recent = (self._recent + [beat.kind])[-RECENT:]
        self._cursor = beat.time

    def forget(self, before: float) -> None:
        """Drop the requests no time from ``before`` on depends on (a long stream's record
        stays small): the untimed request under ``before`` (what every timed one resumes), the
        timed ones still holding there, and those after it; the episodes then begin with it."""
        if before <= self.start:
            return
        base = max((i for i, q in enumerate(self._requests) if q.until is None and q.at <= before), default=None)
        while base and RHYTHMS[self._requests[base].rhythm.name].one_beat:
            base -= 1  # a pause not over yet hands back to the rhythm before it
        if base is None:
            return
        later = [q for q in self._requests[base + 1:] if q.until is None or q.until > before]
        ended = [q.until for q in self._requests[base + 1:] if q.until is not None and q.until <= before]
        # a timed request over before ``before`` handed back to the base, which holds from its end as
        # ``rhythm_at`` says (no later than what is kept begins: the episodes start at the first request)
        q = self._requests[base]
        at = min([max([q.at, *ended]), *(k.at for k in later)])
        self._requests = [_Request(at, q.rhythm, None)] + later
        self.start = at

    def to_dict(self) -> dict:
        """The schedule's whole state as JSON values (a stream position carries it)."""
        def beat(b: Beat | None) -> list | None:
            return None if b is None else [b.time, b.kind, b.anchor]
        return {"start": self.start, "seed": self.seed, "cursor": self._cursor, "count": self._count,
                "recent": "".join(self._recent), "last": beat(self._last), "pending": beat(self._pending),
                "requests": [[q.at, q.rhythm.to_dict(), q.until] for q in self._requests]}

    @classmethod
    def from_dict(cls, d: dict) -> BeatSchedule:
        """A schedule as ``to_dict`` wrote it; ValueError (RhythmError among them) if it is not one."""
        try:
            reqs = [_Request(float(at), Rhythm.from_dict(r), None if until is None else float(until))
                    for at, r, until in d["requests"]]

            def beat(v: list | None) -> Beat | None:
                return None if v is None else Beat(float(v[0]), str(v[1]), None if v[2] is None else float(v[2]))
            if not reqs:
                raise ValueError("a schedule has at least one request")
            sched = cls(reqs[0].rhythm, float(d["start"]), int(d["seed"]))
            sched._requests, sched._cursor, sched._count = reqs, float(d["cursor"]), int(d["count"])
            sched._recent, sched._last, sched._pending = list(str(d["recent"]))[-RECENT:], beat(d["last"]), \
                beat(d["pending"])
            return sched
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"not a beat schedule: {exc.__class__.__name__}") from exc

    def episodes(self, until: float) -> list[Episode]:
        """The rhythm episodes from the stream's start up to ``until`` (the last one open). A pause
        is no episode: its beat's long RR is the record of it (MIT-BIH annotates none either)."""
        points = sorted({self.start, *(q.at for q in self._requests), *(q.until for q in self._requests if q.until)})
        spans: list[Episode] = []
        for p in [p for p in points if p < until]:
            rhythm, _ = self.rhythm_at(p)
            name = episode_name(rhythm)
            if RHYTHMS[rhythm.name].one_beat and spans:
                continue  # asked for but its beat not made yet: the rhythm before it goes on
            if spans and spans[-1].rhythm == name:
                continue
            if spans:
                spans[-1] = Episode(spans[-1].rhythm, spans[-1].start, p)
            spans.append(Episode(name, p))
        return spans
