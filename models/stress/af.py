"""A reference AF episode detector from beat times alone, after Dash et al. (2009, Ann Biomed
Eng 37:1701): in a window of ``WINDOW`` RR intervals about each interval, with the ``TRIM``
longest and shortest left out, AF where the RR series is both irregular (RMSSD over the mean RR
above ``NRMSSD``) and disordered (Shannon entropy of its 16-bin histogram, over log 16, above
``ENTROPY``); runs of AF intervals less than ``GAP_S`` apart are one episode, and an episode
counts from ``MIN_S``.

Measured with the reference beats (``python -m models.evaluation.af``, ``docs/af-detector.json``):
on the 40 MIT-BIH records here, episode Se 88% / +P 48%, duration Se 93% / +P 47% (their
frequent ectopy reads as AF); on CPSC 2021's 18, episode Se 53% / +P 78% (paroxysms under 30 s
are not counted), duration Se 82% / +P 90%. No library at hand detects AF episodes; this is the
scorer's reference, a detector's author plugs in his own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

WINDOW, TRIM = 32, 3
NRMSSD, ENTROPY = 0.1, 0.7  # Dash et al.'s thresholds
MIN_S, GAP_S = 30.0, 10.0


def af_intervals(times: Sequence[float]) -> np.ndarray:
    """Whether each RR interval of beats at ``times`` (seconds, sorted) lies in AF."""
    t = np.asarray(times, np.float64)
    rr = np.diff(t)
    flags = np.zeros(len(rr), bool)
    if len(rr) < WINDOW:
        return flags
    win = sliding_window_view(rr, WINDOW)
    order = np.sort(win, axis=1)
    lo, hi = order[:, TRIM][:, None], order[:, WINDOW - 1 - TRIM][:, None]
    keep = (win >= lo) & (win <= hi)
    verdict = np.zeros(len(win), bool)
    for k in range(len(win)):  # a few thousand windows a record: the loop is not the cost
        w = win[k][keep[k]]
        nrmssd = np.sqrt(np.mean(np.diff(w) ** 2)) / np.mean(w)
        h, _ = np.histogram(w, bins=16)
        p = h[h > 0] / h.sum()
        verdict[k] = nrmssd > NRMSSD and -(p * np.log(p)).sum() / np.log(16) > ENTROPY
    flags[np.arange(len(win)) + WINDOW // 2] = verdict
    return flags


def af_episodes(times: Sequence[float]) -> list[tuple[float, float]]:
    """AF episodes (start, end) in seconds among beats at ``times``."""
    t = np.asarray(times, np.float64)
    idx = np.flatnonzero(af_intervals(t))
    episodes: list[tuple[float, float]] = []
    for run in np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1) if len(idx) else []:
        start, end = float(t[run[0]]), float(t[run[-1] + 1])
        if episodes and start - episodes[-1][1] <= GAP_S:
            episodes[-1] = (episodes[-1][0], end)
        else:
            episodes.append((start, end))
    return [(a, b) for a, b in episodes if b - a >= MIN_S]
