"""``twin-engine train erase``: erase the rhythm layer's states from base vectors.

Contrastive training on records that mostly pair a patient with itself in one state learns
rhythm and rate as part of "who". LEACE (Belrose et al., 2023, "LEACE: Perfect linear concept
erasure in closed form") finds the smallest affine change, in the vectors' own whitened
geometry, after which no linear function of them correlates with the concepts. The concepts
are what the service draws from the rhythm layer and the condition, not from the person:
``RHYTHM_STATEMENTS`` and the heart rate. Measured on the shipped encoder (183 held-out
records): linear AFIB probe AUROC 0.92 -> 0.43, heart-rate R^2 0.69 -> -0.01, half-vs-half
identity 0.995 -> 0.989; erasing all 20 statements as well cost identity 0.92, so morphology
(the person's QRS) stays.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from models.conditions import CardiacState
from models.nets.base_extractor import BaseExtractor
from models.rhythm.morphology import RHYTHM_STATEMENTS
from models.training.trainer import TrainingSet, record_latents_and_bases
from models.twin import TwinModel

CONCEPTS = tuple(sorted(RHYTHM_STATEMENTS))


def concepts(states: list[CardiacState]) -> np.ndarray:
    """(N, len(CONCEPTS) + 1): each record's rhythm-statement intensities and heart rate."""
    return np.array([[s.statements.get(c, 0.0) for c in CONCEPTS] + [s.heart_rate] for s in states], np.float64)


def leace(x: np.ndarray, z: np.ndarray, tol: float = 1e-3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LEACE eraser for data ``x`` (N, D) and concepts ``z`` (N, K).

    Returns:
        (mean, a, b): ``x - (x - mean) @ b @ a.T`` has zero covariance with ``z``; ``a`` and ``b``
        are (D, r), r <= K the rank of the cross-covariance.
    """
    x = np.asarray(x, np.float64)
    mean = x.mean(0)
    xc, zc = x - mean, z - z.mean(0)
    w, v = np.linalg.eigh(xc.T @ xc / len(x))
    # the erasure is exact at any floor; a floor of 1e-3 of the largest variance keeps the
    # whitening's entries within 16 (float32 rounding otherwise leaks the concepts back)
    w = np.clip(w, tol * w.max(), None)
    whiten, unwhiten = (v * w ** -0.5) @ v.T, (v * w ** 0.5) @ v.T
    u, s, _ = np.linalg.svd(whiten @ (xc.T @ zc / len(x)), full_matrices=False)
    q = u[:, s > 1e-8 * max(s.max(), 1e-30)]
    return mean, unwhiten @ q, whiten @ q


def fit_erasure(model: TwinModel, ts: TrainingSet, device: torch.device) -> dict:
    """Fit the eraser on the training records' base vectors (made as the service makes them)
    and install it in ``model.ibe`` (a new extractor: the base vectors' space, and so the
    encoder id, changes)."""
    if model.ibe.cfg.erase_rank:
        raise ValueError("the base extractor already has an erasure; erase from the unerased run")
    _, bases = record_latents_and_bases(model, ts, device)
    x, z = bases.cpu().numpy(), concepts(ts.states)
    mean, a, b = leace(x, z)
    ibe = BaseExtractor(replace(model.ibe.cfg, erase_rank=a.shape[1])).to(device)
    erase = {"erase_mean": mean, "erase_a": a, "erase_b": b}
    missing, unexpected = ibe.load_state_dict(model.ibe.state_dict(), strict=False)
    if set(missing) != set(erase) or unexpected:  # only the erasure is new; anything else is a bug
        raise RuntimeError(f"extractor weights do not carry over: missing {missing}, unexpected {unexpected}")
    for name, t in erase.items():
        getattr(ibe, name).copy_(torch.from_numpy(t.astype(np.float32)))
    model.ibe = ibe
    after = ibe.erase(bases).cpu().numpy()
    return {"concepts": [*CONCEPTS, "heart_rate"], "rank": int(a.shape[1]),
            "cross_covariance_before": round(_cross_cov(x, z), 6),
            "cross_covariance_after": round(_cross_cov(after, z), 6)}


def _cross_cov(x: np.ndarray, z: np.ndarray) -> float:
    """Frobenius norm of the covariance between the vectors and the standardised concepts (a
    least-squares fit in 256 dimensions is too ill-conditioned to show what is left)."""
    keep = z.std(0) > 0
    zs = (z[:, keep] - z[:, keep].mean(0)) / z[:, keep].std(0)
    return float(np.linalg.norm((x - x.mean(0)).T @ zs / len(x)))


__all__ = ["CONCEPTS", "concepts", "fit_erasure", "leace"]
