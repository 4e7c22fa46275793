"""Which state each segment of a stream is in: pure arithmetic over the changes asked for.

States follow event time: each change holds from a stream time (its ``effective_time``, or the
next segment not yet published), and a segment gets the state of the last change at or before
its start, its heart rate ramped over ``transition_seconds``. Changes scheduled ahead therefore
all happen, in the order of their times, whatever order they arrive in. No asyncio here: the
stream's task loop (``worker.stream``) asks, the tests ask directly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from models.conditions import CardiacState
from models.rhythm import Rhythm
from stream.events import state_from_dict
from twin_engine.registry import Change


@dataclass
class StateChange:
    state: CardiacState
    event_id: str
    effective_time: float | None  # stream time; None = next unpublished segment
    transition_seconds: float
    received: float  # monotonic
    at: float = float("-inf")  # stream time it holds from (set by the stream: effective_time or the next segment)
    first_seq: int | None = None  # first segment published in the new state
    published: float | None = None  # monotonic, when that segment went to the sinks
    ramp_from: float | None = None  # heart rate of the segment before its first, once known
    rhythm: Rhythm | None = None  # the rhythm the event named (None: the state's own)


class Timeline:
    """The changes of one stream still to come, and the state before them.

    Args:
        settled: the (state, event id) in effect before any change here.
        start_time: the stream time at which segment ``seq`` starts.
        seconds: one segment's length.
    """

    def __init__(self, settled: tuple[CardiacState, str | None], start_time: Callable[[int], float],
                 seconds: float) -> None:
        self.settled = settled
        self.start_time, self.seconds = start_time, seconds
        # changes not yet wholly in effect, by the time they hold from
        self.changes: list[StateChange] = []
        self.last: StateChange | None = None  # the last one received

    def schedule(self, change: StateChange, next_seq: int) -> float:
        """Add ``change``; returns the stream time it holds from: its effective time, but never
        before segment ``next_seq`` (what is out cannot change)."""
        at = self.start_time(next_seq)
        if change.effective_time is not None:
            at = max(at, change.effective_time)
        change = replace(change, at=at)
        for later in self.changes:  # their ramps may now start from another heart rate
            if later.at > at:
                later.ramp_from = None
        self.changes.append(change)
        self.changes.sort(key=lambda c: c.at)  # stable: equal times keep their order of arrival
        self.last = change
        return at

    def restore(self, history: list[Change], next_seq: int) -> None:
        """On a stream restored from the registry: the states its history schedules after
        segment ``next_seq`` are still to come, and the one in effect there holds until then
        (entries without a time, from registration, hold from the start)."""
        nxt = self.start_time(next_seq)
        for h in sorted(history, key=lambda h: h.holds_from):
            state, at, ramp = state_from_dict(h.state), h.holds_from, h.transition
            if at + ramp <= nxt:
                self.settled, self.changes = (state, h.event_id), []
            else:  # still to come, or still ramping (then its first segment is out: no new effect to time)
                self.changes.append(StateChange(state, h.event_id, at, ramp, time.monotonic(), at=at,
                                                first_seq=self.seq_at(at) if at <= nxt else None,
                                                rhythm=h.named_rhythm()))
        self.settle(next_seq)

    def seq_at(self, t: float) -> int:
        """The first segment starting at or after stream time ``t``."""
        return max(0, math.ceil((t - self.start_time(0)) / self.seconds - 1e-9))

    def state_and_event(self, seq: int) -> tuple[CardiacState, str | None]:
        """The state segment ``seq`` is in, and the event that asked for it."""
        t = self.start_time(seq) + 1e-9
        held = [c for c in self.changes if c.at <= t]
        if not held:
            return self.settled
        ch = held[-1]
        frac = self.ramp(ch, seq)
        if frac < 1.0:  # the ramp runs from the heart rate of the segment before its first
            if ch.ramp_from is None:
                first = self.seq_at(ch.at)
                ch.ramp_from = (self.state_and_event(first - 1)[0] if first > 0 else self.settled[0]).heart_rate
            hr = ch.ramp_from + frac * (ch.state.heart_rate - ch.ramp_from)
            return replace(ch.state, heart_rate=hr), ch.event_id
        return ch.state, ch.event_id

    def ramp(self, ch: StateChange, seq: int) -> float:
        """How far segment ``seq`` is along the change's heart-rate ramp (1: done or none)."""
        if ch.transition_seconds <= 0:
            return 1.0
        return min(1.0, (seq - self.seq_at(ch.at) + 1) * self.seconds / ch.transition_seconds)

    def settle(self, next_seq: int) -> None:
        """Forget the oldest change once no segment still to come depends on it: when the next
        one holds and no longer needs its heart rate to ramp from, or when it holds wholly
        itself (its first segment out, its ramp done) and becomes the state later ones start
        from. The list keeps only what is still to come."""
        nxt = next_seq
        while self.changes:
            ch, later = self.changes[0], self.changes[1] if len(self.changes) > 1 else None
            superseded = (later is not None and self.seq_at(later.at) <= nxt
                          and (later.ramp_from is not None or self.ramp(later, nxt) >= 1.0))
            done = nxt > self.seq_at(ch.at) and self.ramp(ch, nxt) >= 1.0
            if not (superseded or done):
                return
            self.settled = (ch.state, ch.event_id)
            self.changes.pop(0)
