"""One stream's rhythm, window by window: its beat schedule drawn by its renderer.

``RhythmTrack.window(t0, n)`` returns the samples, the beats whose R peak falls in the window
(the ground truth of that window) and the episodes it overlaps. The beats near a seam are kept
so that the next window draws the rest of a beat begun in this one.
"""

from __future__ import annotations

import copy

import numpy as np

from models.rhythm.beats import Beat, Episode
from models.rhythm.render import REACH_AFTER_S, REACH_BEFORE_S, BeatBank, BeatRenderer
from models.rhythm.schedule import BeatSchedule


class RhythmTrack:
    """Args:
        schedule: the stream's beats.
        renderer: the patient's morphology.
    """

    def __init__(self, schedule: BeatSchedule, renderer: BeatRenderer) -> None:
        self.schedule, self.renderer = schedule, renderer
        self._beats: list[Beat] = []  # handed out by the schedule, still within reach
        # what the owner last asked of the schedule and the morphology it draws (its own keys,
        # kept with the track so that a copy put back also puts them back)
        self.asked, self.look = "", ""

    def to_dict(self) -> dict:
        """The track's state as JSON values: its schedule and the beats still within reach."""
        return {"schedule": self.schedule.to_dict(), "beats": [[b.time, b.kind] for b in self._beats],
                "asked": self.asked, "look": self.look}

    @classmethod
    def from_dict(cls, d: dict, renderer: BeatRenderer) -> RhythmTrack:
        """A track as ``to_dict`` wrote it, drawn by ``renderer``; ValueError if it is not one."""
        try:
            track = cls(BeatSchedule.from_dict(d["schedule"]), renderer)
            track._beats = [Beat(float(t), str(k)) for t, k in d["beats"]]
            track.asked, track.look = str(d.get("asked", "")), str(d.get("look", ""))
            return track
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a rhythm track: {exc.__class__.__name__}") from exc

    @property
    def fs(self) -> int:
        return self.renderer.fs

    def morph(self, since: float, bank: BeatBank) -> None:
        """Draw the beats from stream time ``since`` on with ``bank`` (a new morphology)."""
        self.renderer.morph(since, bank)

    def window(self, t0: float, n: int) -> tuple[np.ndarray, list[Beat], list[Episode]]:
        """(samples (n, leads), beats with t0 <= time < t1, episodes overlapping [t0, t1))."""
        t1 = t0 + n / self.fs
        self._beats += self.schedule.beats(t1 + REACH_BEFORE_S)
        near = [i for i, b in enumerate(self._beats) if b.time >= t0 - REACH_AFTER_S]
        use = self._beats[max(0, near[0] - 1):] if near else self._beats[-1:]  # one before: its RR
        episodes = [e for e in self.schedule.episodes(t1) if e.end is None or e.end > t0]
        x = self.renderer.render(t0, n, use, episodes)
        later = [i for i, b in enumerate(self._beats) if b.time >= t1 - REACH_AFTER_S]
        self._beats = self._beats[max(0, later[0] - 1):] if later else self._beats[-1:]
        return x, [b for b in use if t0 <= b.time < t1], episodes

    def copy(self) -> RhythmTrack:
        """A track that goes on apart from this one (the bank arrays are shared)."""
        twin = RhythmTrack(copy.deepcopy(self.schedule), self.renderer.copy())
        twin._beats, twin.asked, twin.look = list(self._beats), self.asked, self.look
        return twin
