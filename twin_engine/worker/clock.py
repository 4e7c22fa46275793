"""Stream time against the monotonic clock."""

from __future__ import annotations

import time


class StreamClock:
    """Stream time (epoch seconds) vs the monotonic clock: x1 real time, xN accelerated, 0 as fast
    as possible (every segment is due at once)."""

    def __init__(self, speed: float = 1.0) -> None:
        self.speed = speed
        self.t0_wall, self.t0_mono = time.time(), time.monotonic()

    def now(self) -> float:
        if self.speed == 0:
            return float("inf")
        return self.t0_wall + (time.monotonic() - self.t0_mono) * self.speed

    def anchor(self) -> float:
        """Stream time at which a new stream starts: now (or the clock's origin when ASAP)."""
        return self.t0_wall if self.speed == 0 else self.now()

    def advance_to(self, stream_time: float) -> None:
        """Move the clock on to ``stream_time`` if that is ahead (never back): in accelerated mode
        a restarted worker's clock starts from the wall clock again, while the streams it
        restores ran ahead of it by (speed - 1) x the time they ran, and would wait that long."""
        now = self.now()
        if self.speed and stream_time > now:
            self.t0_wall += stream_time - now

    def due(self, stream_time: float) -> float:
        """Monotonic time at which ``stream_time`` arrives."""
        if self.speed == 0:
            return float("-inf")
        return self.t0_mono + (stream_time - self.t0_wall) / self.speed
