"""NSTDB noise added at a requested signal-to-noise ratio, with the Noise Stress Test's own
definitions (``nst``, WFDB; Moody, Muldrow and Mark 1984):

- S: the mean peak-to-peak amplitude of normal QRS complexes (each measured from 50 ms before
  to 50 ms after its annotation; the largest and smallest 5% dropped), squared, over 8;
- N: the mean RMS deviation of the noise from its mean over one-second chunks (the largest and
  smallest 5% dropped), squared;
- SNR = 10 log10(S / (a^2 N)), solved for the noise gain a.

One difference: ``nst`` measures N on the noise record's first 300 s; here it is measured on the
stretch of noise actually added, so the SNR asked for is the SNR a record gets (short twin
streams see minutes of noise, not the record's first five). ``em`` is only 10 s long in
``../shared/data/nstdb``: it is looped (from a seeded offset), so electrode motion repeats every
10 s, which a detector could in principle learn; ``bw`` and ``ma`` are whole (30 min).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import wfdb

from models.data.preprocess import resample

NOISE_RECORDS = {"bw": "bw", "ma": "ma", "em": "em10s"}
TRIM = 0.05  # the largest and smallest 5% of the measurements are dropped


class NoiseError(ValueError):
    """A noise request that cannot be met: unknown kind, no beats to measure S on, ..."""


def _trimmed_mean(values: np.ndarray) -> float:
    v = np.sort(np.asarray(values, np.float64))
    k = int(len(v) * TRIM)
    return float(v[k:len(v) - k].mean() if len(v) > 2 * k else v.mean())


def qrs_power(signal: np.ndarray, beats: np.ndarray, fs: float, limit: int = 300) -> float:
    """S of one lead (samples,) from its normal beats' sample indices (the first ``limit``)."""
    half = int(round(0.05 * fs))
    spans = [signal[max(0, b - half):b + half + 1] for b in np.asarray(beats, int)[:limit]
             if 0 <= b < len(signal)]
    if not spans:
        raise NoiseError("no beats to measure the QRS amplitude on")
    p2p = np.array([s.max() - s.min() for s in spans])
    return _trimmed_mean(p2p) ** 2 / 8.0


def noise_power(noise: np.ndarray, fs: float) -> float:
    """N of one noise lead (samples,): from its one-second chunks (at least one)."""
    n = int(fs)
    chunks = [noise[i:i + n] for i in range(0, max(1, len(noise) - n + 1), n)]
    rms = np.array([np.sqrt(np.mean((c - c.mean()) ** 2)) for c in chunks if len(c)])
    return _trimmed_mean(rms) ** 2


def snr_db(clean: np.ndarray, added: np.ndarray, beats: np.ndarray, fs: float) -> float:
    """The SNR of ``added`` noise on ``clean`` (both (samples,)), measured as ``nst`` defines it."""
    return 10.0 * np.log10(qrs_power(clean, beats, fs) / noise_power(added, fs))


def noise_record(nstdb: Path, kind: str, fs: float) -> np.ndarray:
    """The whole NSTDB noise record of ``kind`` (bw, ma, em) at ``fs``.

    Returns:
        (samples, 2) float64 in mV (em: its one lead twice).
    """
    if kind not in NOISE_RECORDS:
        raise NoiseError(f"unknown noise {kind!r}; known: {', '.join(NOISE_RECORDS)}")
    rec = wfdb.rdrecord(str(Path(nstdb) / NOISE_RECORDS[kind]))
    x = rec.p_signal.astype(np.float64)
    if x.shape[1] == 1:
        x = np.repeat(x, 2, axis=1)
    if abs(rec.fs - fs) > 1e-6:
        x = resample(x, rec.fs, float(fs))
    return x


def read_noise(nstdb: Path, kind: str, fs: float, seconds: float, seed: int = 0) -> np.ndarray:
    """``seconds`` of NSTDB noise of ``kind`` (bw, ma, em), both its leads, at ``fs``; a seeded
    start within the record, looped past its end.

    Returns:
        (samples, 2) float64 in mV (em: its one lead twice).
    """
    x = noise_record(nstdb, kind, fs)
    need = int(round(seconds * fs))
    start = int(np.random.default_rng(seed).integers(0, len(x)))
    idx = (start + np.arange(need)) % len(x)
    return x[idx]


def add_noise(clean: np.ndarray, beats: np.ndarray, fs: float, noise: np.ndarray, snr: float) -> np.ndarray:
    """``clean`` (samples, leads) with ``noise`` (samples, k; lead i gets noise lead i % k) scaled
    per lead so that each lead's SNR is ``snr`` dB (``nst``'s definition, S from ``beats``).

    Returns:
        the noisy signal, same shape as ``clean``.
    """
    clean = np.asarray(clean, np.float64)
    if clean.ndim == 1:
        clean = clean[:, None]
    if len(noise) < len(clean):
        raise NoiseError(f"{len(noise)} noise samples for {len(clean)} signal samples")
    out = clean.copy()
    for lead in range(clean.shape[1]):
        n = noise[:len(clean), lead % noise.shape[1]]
        n = n - n.mean()  # nst cancels step changes in level the same way (its offsets b)
        gain = np.sqrt(qrs_power(clean[:, lead], beats, fs) / (noise_power(n, fs) * 10 ** (snr / 10.0)))
        out[:, lead] += gain * n
    return out
