"""A heart-rate meter read against the truth, as IEC 60601-2-27 tests one.

The meter under test reads the rate each second from the beats a QRS detector found: 60 over
the mean of the last ``AVERAGE_RR`` RR intervals, and 0 once no beat has come for
``ASYSTOLE_S`` (a monitor shows asystole as 0). The truth is the same meter on the true beats,
so its error is the detector's, not the averaging's. Accuracy: within 1% or 1 bpm, whichever
is greater (what monitors disclose under IEC 60601-2-27, e.g. Mindray's BeneHeart manuals), and
within 10% or 5 bpm (ANSI/AAMI EC13's requirement). Response to a rate step (IEC 60601-2-27
201.7.9.2.9.101 b) 5): 80 -> 120 and 80 -> 40 bpm, disclosed; monitors state under 11 s): from
the step until the meter stays within the 10%/5 bpm band of the new rate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

AVERAGE_RR = 4
ASYSTOLE_S = 6.0


def meter(times: Sequence[float], at: np.ndarray) -> np.ndarray:
    """The meter's reading (bpm) at each time of ``at`` from beats at ``times`` (sorted, s); NaN
    before it has ``AVERAGE_RR`` intervals."""
    t = np.asarray(times, np.float64)
    out = np.full(len(at), np.nan)
    for i, now in enumerate(at):
        k = int(np.searchsorted(t, now, side="right"))  # beats so far
        if k and now - t[k - 1] > ASYSTOLE_S:
            out[i] = 0.0
        elif k > AVERAGE_RR:
            out[i] = 60.0 * AVERAGE_RR / (t[k - 1] - t[k - 1 - AVERAGE_RR])
    return out


def band_bound(rate: np.ndarray) -> np.ndarray:
    """10% or 5 bpm, whichever is greater (EC13's accuracy; the band a step settles in)."""
    return np.maximum(5.0, 0.1 * np.abs(rate))


def strict_bound(rate: np.ndarray) -> np.ndarray:
    """1% or 1 bpm, whichever is greater."""
    return np.maximum(1.0, 0.01 * np.abs(rate))


def accuracy(truth: Sequence[float], found: Sequence[float], start: float, end: float) -> dict:
    """Each second from ``start`` to ``end``: the share of readings within each bound, and the
    median and largest error (bpm)."""
    at = np.arange(np.ceil(start), end, 1.0)
    ref, got = meter(truth, at), meter(found, at)
    ok = np.isfinite(ref)
    ref, got = ref[ok], np.where(np.isfinite(got[ok]), got[ok], 0.0)
    err = np.abs(got - ref)
    if not len(err):
        return {"seconds": 0}
    return {"seconds": int(len(err)), "within_10pct": round(float(np.mean(err <= band_bound(ref))), 4),
            "within_1bpm": round(float(np.mean(err <= strict_bound(ref))), 4),
            "median_error_bpm": round(float(np.median(err)), 2), "max_error_bpm": round(float(err.max()), 1)}


def step_response(found: Sequence[float], step_at: float, rate: float, until: float) -> float | None:
    """Seconds from ``step_at`` until the meter stays within the 10%/5 bpm band of ``rate`` up to
    ``until`` (read every 0.1 s); None if it never settles."""
    at = np.arange(step_at, until, 0.1)
    if not len(at):
        return None
    bad = ~(np.abs(np.nan_to_num(meter(found, at), nan=-1e9) - rate) <= band_bound(np.array(rate)))
    if bad[-1]:
        return None
    last_bad = np.flatnonzero(bad)
    return 0.0 if not len(last_bad) else round(float(at[last_bad[-1]] + 0.1 - step_at), 1)
