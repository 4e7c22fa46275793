"""Bring any reference ECG to the model's input: its sampling rate, band 0.5-40 Hz, per-lead z-score.

The PTB-XL subset was made this way at its source, so the same steps applied to raw-mV records
(LUDB, a bedside export) put them in the units the model was trained on.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from scipy.signal import butter, resample_poly, sosfiltfilt


def resample(x: np.ndarray, fs: float, target_fs: float) -> np.ndarray:
    """``x`` (samples, leads) from ``fs`` to ``target_fs`` (polyphase, the ratio to a denominator
    of 1000 at most); as it is at the same rate."""
    if fs == target_fs:
        return x
    r = Fraction(target_fs / fs).limit_denominator(1000)
    return resample_poly(x, r.numerator, r.denominator, axis=0)


def to_model_input(signal: np.ndarray, fs: float, target_fs: int, leads: int = 12) -> np.ndarray:
    x = np.asarray(signal, np.float64)
    if x.ndim != 2 or x.shape[1] != leads:
        raise ValueError(f"expected (samples, {leads}) leads, got shape {x.shape}")
    if not np.isfinite(x).all():
        x = np.nan_to_num(x)
    x = resample(x, fs, target_fs)
    if x.shape[0] < 2 * target_fs:
        raise ValueError(f"reference too short: {x.shape[0] / target_fs:.1f} s, need at least 2 s")
    with np.errstate(over="ignore", invalid="ignore"):
        x = band(x, target_fs)
        x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    if not np.isfinite(x).all():  # values near the float limit overflow in the filter
        raise ValueError("reference values out of range: not finite once filtered")
    return x.astype(np.float32)


def band(x: np.ndarray, fs: float) -> np.ndarray:
    """The 0.5-40 Hz band of ``x`` (samples, leads): 4th-order Butterworth, zero phase. Its SD per
    lead is what ``to_model_input`` divides by, the lead's scale (``models.amplitude``)."""
    sos = butter(4, [0.5, 40.0], btype="band", fs=fs, output="sos")
    return sosfiltfilt(sos, x, axis=0)
