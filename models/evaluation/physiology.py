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


def interval_stats(windows: np.ndarray, fs: int) -> dict:
    """Per-window intervals of a set of (samples, leads) windows: medians, IQR, P presence."""
    per = [intervals(w, fs) for w in windows]
    out = {"_values": {k: np.array([d[k] for d in per]) for k in KEYS}}
    for k in KEYS:
        v = out["_values"][k]
        f = v[np.isfinite(v)]
        out[k] = {"median": float(np.median(f)) if len(f) else float("nan"),
                  "q25": float(np.percentile(f, 25)) if len(f) else float("nan"),
                  "q75": float(np.percentile(f, 75)) if len(f) else float("nan"),
                  "found": float(len(f) / max(1, len(v)))}
    return out


def compare_intervals(sets: dict[str, np.ndarray], reference: str, fs: int) -> dict:
    """Interval distributions of each set and their Wasserstein-1 distance (ms) to ``reference``."""
    stats = {name: interval_stats(w, fs) for name, w in sets.items()}
    ref = stats[reference]["_values"]
    out = {}
    for name, st in stats.items():
        vals = st.pop("_values")
        out[name] = st
        if name != reference:
            for k in KEYS:
                a, b = ref[k][np.isfinite(ref[k])], vals[k][np.isfinite(vals[k])]
                st[k]["w1_to_real_ms"] = float(wasserstein_distance(a, b)) if len(a) and len(b) else float("nan")
    return out
