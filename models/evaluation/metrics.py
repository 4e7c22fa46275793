"""Distribution, conditioning and identity metrics over feature vectors."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import linalg


def fid(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def _kth_radius(x: np.ndarray, k: int) -> np.ndarray:
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    return np.sort(d, axis=1)[:, k]  # index 0 is the point itself


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict[str, float]:
    """Precision, recall (k-NN manifolds, Kynkäänniemi et al. 2019), density and coverage
    (Naeem et al. 2020)."""
    r_real, r_fake = _kth_radius(real, k), _kth_radius(fake, k)
    d = np.linalg.norm(real[:, None] - fake[None], axis=-1)  # (real, fake)
    inside = d < r_real[:, None]
    return {
        "precision": float(inside.any(axis=0).mean()),
        "recall": float((d < r_fake[None]).any(axis=1).mean()),
        "density": float(inside.sum(axis=0).mean() / k),
        "coverage": float((d.min(axis=1) < r_real).mean()),
    }


def bootstrap(fn: Callable[[np.ndarray, np.ndarray], float | dict], a: np.ndarray, b: np.ndarray,
              reps: int = 50, seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """{metric: (median, low, high)} over half-samples drawn without replacement.

    Resampling with replacement puts duplicate points in the sets, which shrinks k-NN radii and
    inflates FID, so the interval would not even contain the estimate; half-sampling avoids
    duplicates. Every source is scored at the same set sizes, so rows stay comparable."""
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    for _ in range(reps):
        r = fn(a[rng.permutation(len(a))[: len(a) // 2]], b[rng.permutation(len(b))[: len(b) // 2]])
        r = r if isinstance(r, dict) else {"value": r}
        for k, v in r.items():
            samples.setdefault(k, []).append(v)
    return {k: (float(np.median(v)), float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5)))
            for k, v in samples.items()}


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, score))


def retrieval(queries: np.ndarray, keys: np.ndarray) -> dict[str, float]:
    """Query i should find key i: top-1 accuracy and mean rank (1 = best) by cosine similarity."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    k = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    sim = q @ k.T
    rank = (sim > np.diag(sim)[:, None]).sum(axis=1) + 1
    return {"top1": float((rank == 1).mean()), "mean_rank": float(rank.mean()), "n": int(len(q))}
