"""R-peak detection and heart rate for 12-lead (or fewer) ECG.

Used for training labels (PTB-XL has no heart-rate column), for the heart-rate metric of
generated twins, and for the dashboards. Deliberately simple: an energy envelope of all leads'
slopes, peaks at least 250 ms apart (max 240 bpm), refined to the largest |slope| energy.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import butter, find_peaks, sosfiltfilt


def detect_r_peaks(signal: np.ndarray, fs: float) -> np.ndarray:
    """Sample indices of R peaks in a (samples, leads) or (samples,) signal."""
    x = np.asarray(signal, np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.shape[0] < int(fs):
        return np.zeros(0, int)
    sos = butter(2, [5.0, min(30.0, 0.45 * fs)], btype="band", fs=fs, output="sos")
    f = sosfiltfilt(sos, x, axis=0)
    f = f / (np.std(f, axis=0, keepdims=True) + 1e-8)
    energy = (np.diff(f, axis=0, prepend=f[:1]) ** 2).sum(axis=1)
    win = max(1, int(0.08 * fs))
    env = np.convolve(energy, np.ones(win) / win, mode="same")
    height = 0.3 * np.percentile(env, 99)
    peaks, _ = find_peaks(env, height=height, distance=int(0.25 * fs))
    return peaks


def heart_rate(signal: np.ndarray, fs: float) -> float:
    """Beats per minute from the median RR interval; NaN when fewer than two beats."""
    peaks = detect_r_peaks(signal, fs)
    if len(peaks) < 2:
        return float("nan")
    return float(60.0 * fs / np.median(np.diff(peaks)))


def label_heart_rate(signal: np.ndarray, fs: float, default: float = 70.0) -> float:
    """Heart rate usable as a condition: clipped to 30-220 bpm, ``default`` where undetectable."""
    hr = heart_rate(signal, fs)
    return float(np.clip(hr, 30, 220)) if np.isfinite(hr) else default
