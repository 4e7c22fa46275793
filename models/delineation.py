"""Multi-lead wave delineation: P onset, QRS onset and offset, T offset of each beat.

Why our own: neurokit2's single-lead delineators, checked against LUDB's expert annotations on
lead II, were far off on these records (its DWT method: QRS duration r = 0.28, QT bias -40 ms;
its CWT and peak methods were worse or found nothing; 2026-11-25). Clinicians measure intervals on all leads together, and so does this:

- QRS: the spatial velocity (slope magnitude over all leads) rises from its isoelectric floor
  at the QRS onset and falls back at the offset; both are where it crosses a fraction ``qrs`` of
  its peak above the floor.
- T offset: the spatial distance of the (10 Hz low-passed) signal from the isoelectric level
  before the QRS peaks in the T wave and decays; the offset is where it falls under a fraction
  ``t`` of the T peak.
- P onset: the same distance, measured from the PR-segment level, in the ~300 ms before the
  QRS; the onset is where it falls under a fraction ``p`` of the P peak. No P where that peak
  is not clearly above the noise (atrial fibrillation).

The fractions (``Thresholds``) were fitted by a grid search, one at a time, on LUDB records 1-75;
``twin-engine evaluate`` reports the error on those and on the held-back records 76-150
(models/evaluation/physiology.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import butter, sosfiltfilt

from models.rpeaks import detect_r_peaks


@dataclass(frozen=True)
class Thresholds:
    # fitted on LUDB records 1-75 (grid search, one fraction at a time)
    qrs: float = 0.1
    t: float = 0.4
    p: float = 0.6
    p_min: float = 1.2  # P peak (spatial, in units of each lead's spread) below which: no P wave


@dataclass(frozen=True)
class Beat:
    r: int
    qrs_on: int
    qrs_off: int
    t_off: float  # sample index, NaN where not found
    p_on: float


def _filt(x: np.ndarray, fs: float, lo: float | None, hi: float) -> np.ndarray:
    if lo is None:
        sos = butter(2, hi, btype="low", fs=fs, output="sos")
    else:
        sos = butter(2, [lo, hi], btype="band", fs=fs, output="sos")
    return sosfiltfilt(sos, x, axis=0)


def _smooth(x: np.ndarray, n: int) -> np.ndarray:
    return np.convolve(x, np.ones(max(1, n)) / max(1, n), mode="same")


def delineate(ecg: np.ndarray, fs: float, th: Thresholds = Thresholds()) -> list[Beat]:
    """Beats of a (samples, leads) ECG, any units (each lead is scaled by its own spread)."""
    x = np.asarray(ecg, np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.shape[0] < 2 * fs:
        return []
    x = _filt(x, fs, 0.5, min(40.0, 0.45 * fs))
    x = x / (np.std(x, axis=0, keepdims=True) + 1e-8)
    slow = _filt(x, fs, None, 10.0)
    vel = _smooth(np.sqrt((np.diff(x, axis=0, prepend=x[:1]) ** 2).sum(1)), int(0.02 * fs))
    floor = np.percentile(vel, 20)
    ms = fs / 1000.0
    r_peaks = detect_r_peaks(ecg, fs)
    beats = []
    for k, r in enumerate(r_peaks):
        lo, hi = int(r - 150 * ms), int(r + 150 * ms)
        if lo < 0 or hi >= len(x):
            continue
        c = lo + int(np.argmax(vel[lo:hi]))
        thr = floor + th.qrs * (vel[c] - floor)
        on = c
        while on > lo and vel[on] > thr:
            on -= 1
        off = c
        while off < hi and vel[off] > thr:
            off += 1
        rr = (r_peaks[k + 1] - r) if k + 1 < len(r_peaks) else (r - r_peaks[k - 1] if k else fs)
        # T: from 80 ms after the QRS to 70% of the RR interval (at most 600 ms after the R)
        iso = slow[max(0, on - int(20 * ms))]
        t_lo, t_hi = off + int(80 * ms), min(r + int(min(0.7 * rr, 600 * ms)), len(x) - 1)
        t_off = np.nan
        if t_hi - t_lo > 10 * ms:
            dist = np.sqrt(((slow[t_lo:t_hi] - iso) ** 2).sum(1))
            pk = int(np.argmax(dist))
            below = np.nonzero(dist[pk:] < th.t * dist[pk])[0]
            if len(below):
                t_off = float(t_lo + pk + below[0])
        # P: in the 300 ms before the QRS onset, after the previous beat's T
        p_on = np.nan
        p_lo, p_hi = max(0, on - int(300 * ms)), on - int(20 * ms)
        if k and r_peaks[k - 1] + int(0.6 * rr) > p_lo:
            p_lo = min(p_hi - 1, r_peaks[k - 1] + int(0.6 * rr))
        if p_hi - p_lo > 60 * ms:
            ref = slow[on - int(10 * ms)]
            dist = np.sqrt(((slow[p_lo:p_hi] - ref) ** 2).sum(1))
            pk = int(np.argmax(dist))
            if dist[pk] > th.p_min:
                below = np.nonzero(dist[:pk][::-1] < th.p * dist[pk])[0]
                if len(below):
                    p_on = float(p_lo + pk - 1 - below[0])
        beats.append(Beat(int(r), int(on), int(off), t_off, p_on))
    return beats


def intervals(ecg: np.ndarray, fs: float, th: Thresholds = Thresholds()) -> dict[str, float]:
    """Per-record median PR, QRS and QT in ms (NaN where no beat had that wave)."""
    beats = delineate(ecg, fs, th)
    to_ms = 1000.0 / fs

    def med(v):
        v = np.asarray([a for a in v if np.isfinite(a)], float)
        return float(np.median(v) * to_ms) if len(v) else float("nan")

    return {"pr_ms": med([b.qrs_on - b.p_on for b in beats]),
            "qrs_ms": med([b.qrs_off - b.qrs_on for b in beats]),
            "qt_ms": med([b.t_off - b.qrs_on for b in beats])}
