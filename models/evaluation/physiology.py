"""Physiology checks: PR, QRS and QT intervals of generated beats against real ones.

The intervals come from the project's multi-lead delineation (models/delineation.py), whose
error against LUDB's expert annotations is measured here first, on the LUDB records its
thresholds were not fitted on, so every difference below can be read against that error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.signal import resample_poly
from scipy.stats import wasserstein_distance

from models.delineation import intervals

KEYS = ("pr_ms", "qrs_ms", "qt_ms")
FIT_RECORDS = range(1, 76)  # LUDB records the delineation thresholds were fitted on


def ludb_validation(ludb_dir: Path, fs: int) -> dict:
    """Delineation vs LUDB experts (median over the 12 leads' annotations) on records 76-150,
    with the signal resampled to the model's rate; records 1-75 (the fit) reported apart."""
    from models.data.ludb import LUDB, expert_intervals

    if not (ludb_dir / "data").is_dir() and not any(ludb_dir.glob("*.hea")):
        return {"skipped": f"no LUDB at {ludb_dir}"}
    db = LUDB(ludb_dir)
    out: dict = {}
    for split, ids in (("check_76_150", [r for r in db.record_ids if r not in FIT_RECORDS]),
                       ("fit_1_75", [r for r in db.record_ids if r in FIT_RECORDS])):
        ours = [intervals(resample_poly(db.signal(r), fs, db.fs, axis=0), fs) for r in ids]
        expert = [expert_intervals(db, r) for r in ids]
        rows = {}
        for k in KEYS:
            e, o = np.array([d[k] for d in expert]), np.array([d[k] for d in ours])
            both = np.isfinite(e) & np.isfinite(o)
            rows[k] = {"records": int(both.sum()), "expert_present": int(np.isfinite(e).sum()),
                       "found": int(np.isfinite(o).sum()),
                       "mae_ms": float(np.mean(np.abs(e[both] - o[both]))) if both.any() else float("nan"),
                       "bias_ms": float(np.mean(o[both] - e[both])) if both.any() else float("nan"),
                       "r": float(np.corrcoef(e[both], o[both])[0, 1]) if both.sum() > 2 else float("nan")}
        out[split] = rows
    return out


def interval_values(windows: np.ndarray, fs: int) -> dict[str, np.ndarray]:
    """Per-window intervals (ms, NaN where the wave was not found) of (samples, leads) windows."""
    per = [intervals(w, fs) for w in windows]
    return {k: np.array([d[k] for d in per]) for k in KEYS}


def _summary(v: np.ndarray) -> dict[str, float]:
    f = v[np.isfinite(v)]
    if not len(f):
        return {"median": float("nan"), "q25": float("nan"), "q75": float("nan"), "found": 0.0}
    return {"median": float(np.median(f)), "q25": float(np.percentile(f, 25)),
            "q75": float(np.percentile(f, 75)), "found": float(len(f) / len(v))}


def compare_intervals(sets: dict[str, np.ndarray], reference: str, fs: int) -> dict:
    """Interval distributions of each set (median, IQR, share found) and their Wasserstein-1
    distance (ms) to ``reference``."""
    values = {name: interval_values(w, fs) for name, w in sets.items()}
    out: dict = {}
    for name, vals in values.items():
        out[name] = {k: _summary(vals[k]) for k in KEYS}
        if name != reference:
            for k in KEYS:
                a, b = values[reference][k], vals[k]
                a, b = a[np.isfinite(a)], b[np.isfinite(b)]
                out[name][k]["w1_to_real_ms"] = float(wasserstein_distance(a, b)) if len(a) and len(b) else float("nan")
    return out
