"""Alarms and episodes as the standards score them.

The five ICU alarms of PhysioNet/CinC 2015, by that challenge's definitions, from beats (the
truth's, or a QRS detector's): asystole (no QRS for 4 s), extreme bradycardia (heart rate under
40 bpm for 5 consecutive beats), extreme tachycardia (over 140 bpm for 17 consecutive beats),
ventricular tachycardia (5 or more ventricular beats at over 100 bpm: needs beat classes) and
ventricular flutter/fibrillation (4 s of it: needs a rhythm, so only the truth and a plug-in
that reports episodes have it). And atrial fibrillation, a monitor's non-lethal alarm: the true
AF episodes, and those the reference AF detector (``models.stress.af``) finds among a
detector's beats. Each condition is a list of (onset, end) intervals; an alarm is raised at an
onset.

Episodes are scored as PhysioNet's ``epicmp`` does: episode sensitivity (share of true
episodes overlapped by a detected one), episode positive predictivity (share of detected ones
overlapping a true one), and duration sensitivity and positive predictivity (overlap time over
true, and over detected, time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.stress.af import af_episodes

ASYSTOLE_S = 4.0
BRADY_BPM, BRADY_BEATS = 40.0, 5
TACHY_BPM, TACHY_BEATS = 140.0, 17
VT_BPM, VT_BEATS = 100.0, 5
VF_S = 4.0
ALARMS = ("asystole", "brady", "tachy", "vt", "vf", "afib")
# an alarm counts for a true condition from this long before its onset until this long after its
# end (monitors may confirm late, or read a missed beat as the pause's start); outside, it is false
GRACE_S = 10.0
LOOKBACK_S = 8.0  # what an alarm's definition reads before its onset: 17 beats at 140 bpm, 5 at 40

Interval = tuple[float, float]


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of each run of True in ``flags``."""
    edges = np.diff(np.concatenate([[0], flags.astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1, strict=True))


def _rate_runs(times: np.ndarray, beats: int, test) -> list[Interval]:
    """Intervals where the rate over ``beats`` consecutive beats passes ``test``: from the beat
    that completes the first such window to the last beat of the last one."""
    if len(times) < beats:
        return []
    rr = np.diff(times)
    span = np.convolve(rr, np.ones(beats - 1), mode="valid")  # time of each window of beats-1 RRs
    ok = test(60.0 * (beats - 1) / np.maximum(span, 1e-9))
    return [(float(times[a + beats - 1]), float(times[b + beats - 1])) for a, b in _runs(ok)]


def conditions(times: Sequence[float], end: float, kinds: Sequence[str] | None = None,
               vf: Sequence[Interval] | None = None, start: float = 0.0,
               af: Sequence[Interval] | None = None) -> dict[str, list[Interval]]:
    """Each alarm's intervals in a record from ``start`` to ``end`` (seconds).

    Args:
        times: beat times (seconds), sorted.
        kinds: each beat's class (``N``, ``V``, ...), where known: VT needs them.
        vf: ventricular flutter/fibrillation episodes, where known.
        af: the true AF episodes (the truth's); None: found among ``times`` by the reference
            AF detector (a detector's).

    Returns:
        alarm name -> (onset, end) intervals; VT absent without ``kinds``, VF without ``vf``
        (not raised is not the same as not detected).
    """
    t = np.asarray(times, np.float64)
    edges = np.concatenate([[start], t, [end]])
    gaps = [(float(a + ASYSTOLE_S), float(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)
            if b - a > ASYSTOLE_S]
    # rates are read between VF episodes (VF has no QRS complexes, and is not a slow rate)
    cuts = sorted(vf or [])
    parts = [t[(t >= (cuts[i - 1][1] if i else -np.inf)) & (t < (cuts[i][0] if i < len(cuts) else np.inf))]
             for i in range(len(cuts) + 1)]
    out = {"asystole": gaps,
           "brady": [iv for p in parts for iv in _rate_runs(p, BRADY_BEATS, lambda hr: hr < BRADY_BPM)],
           "tachy": [iv for p in parts for iv in _rate_runs(p, TACHY_BEATS, lambda hr: hr > TACHY_BPM)]}
    if kinds is not None:
        v = np.asarray(kinds) == "V"
        vt = []
        for a, b in _runs(v):
            if b - a + 1 >= VT_BEATS:
                run = t[a:b + 1]
                vt += _rate_runs(run, VT_BEATS, lambda hr: hr > VT_BPM)
        out["vt"] = vt
    out["afib"] = list(af) if af is not None else af_episodes(t)
    if vf is not None:
        out["vf"] = [(float(a + VF_S), float(b)) for a, b in vf if b - a >= VF_S]
        # nor is it asystole
        out["asystole"] = [iv for iv in out["asystole"] if not any(iv[0] < b and a < iv[1] for a, b in vf)]
    return out


@dataclass(frozen=True)
class AlarmScore:
    """True alarms raised and missed, the onsets (s) of false ones, and the delays (s) of those
    raised."""

    raised: int
    missed: int
    false_at: tuple[float, ...] = ()
    delays: tuple[float, ...] = ()

    @property
    def false(self) -> int:
        return len(self.false_at)

    def to_dict(self) -> dict:
        return {"raised": self.raised, "missed": self.missed, "false": self.false,
                "median_delay_s": round(float(np.median(self.delays)), 2) if self.delays else None}


def score_alarms(truth: Sequence[Interval], found: Sequence[Interval], vf: Sequence[Interval] = ()) -> AlarmScore:
    """Each true condition raised if a found onset lies in [onset - GRACE_S, end + GRACE_S] (its
    delay: from the true onset); a found onset in no true condition's window is a false alarm, unless
    it reads a true ``vf`` episode (any alarm is a true one then)."""
    delays, used = [], set()
    for a, b in truth:  # a detector that misses the last beat before a pause alarms early: negative delay
        hits = [i for i, (f, _) in enumerate(found) if a - GRACE_S <= f <= b + GRACE_S]
        used.update(hits)
        if hits:
            delays.append(min(found[i][0] for i in hits) - a)
    false = tuple(f for i, (f, _) in enumerate(found) if i not in used and not in_vf(f, vf))
    return AlarmScore(len(delays), len(truth) - len(delays), false, tuple(round(d, 3) for d in delays))


def in_vf(onset: float, vf: Sequence[Interval]) -> bool:
    """Whether an alarm raised at ``onset`` read beats in (or just after) a VF episode."""
    return any(a <= onset and onset - LOOKBACK_S <= b for a, b in vf)


@dataclass(frozen=True)
class EpisodeScore:
    """``epicmp``'s four figures' parts: true episodes overlapped, detected episodes overlapping,
    and the overlap, true and detected durations (s)."""

    true_hit: int
    true_total: int
    found_hit: int
    found_total: int
    overlap_s: float
    true_s: float
    found_s: float

    def to_dict(self) -> dict:
        def ratio(a: float, b: float) -> float | None:
            return round(a / b, 4) if b else None
        return {"episodes": self.true_total, "detected": self.found_total,
                "se": ratio(self.true_hit, self.true_total), "ppv": ratio(self.found_hit, self.found_total),
                "duration_se": ratio(self.overlap_s, self.true_s), "duration_ppv": ratio(self.overlap_s, self.found_s)}


def _overlap(a: Interval, b: Interval) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def score_episodes(truth: Sequence[Interval], found: Sequence[Interval]) -> EpisodeScore:
    """Episodes and durations matched by overlap, as ``epicmp``."""
    overlap = sum(_overlap(t, f) for t in truth for f in found)
    return EpisodeScore(sum(any(_overlap(t, f) > 0 for f in found) for t in truth), len(truth),
                        sum(any(_overlap(t, f) > 0 for t in truth) for f in found), len(found),
                        overlap, sum(b - a for a, b in truth), sum(b - a for a, b in found))


def pooled(scores: Sequence[EpisodeScore]) -> EpisodeScore:
    """Gross over records."""
    return EpisodeScore(*(sum(getattr(s, k) for s in scores) for k in EpisodeScore.__dataclass_fields__))
