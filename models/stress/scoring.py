"""Beat-by-beat scoring as ANSI/AAMI EC57 does it: each reference beat matched to at most one
detection within 150 ms (``wfdb.processing.compare_annotations``), sensitivity and positive
predictivity, gross (pooled over records) and per record."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from wfdb import processing

EC57_WINDOW_S = 0.15


@dataclass(frozen=True)
class BeatScore:
    """True positives, missed and false beats; Se and +P; median timing error of matches (ms)."""

    tp: int
    fn: int
    fp: int
    timing_ms: float | None = None

    @property
    def se(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def ppv(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    def to_dict(self) -> dict:
        return {"tp": self.tp, "fn": self.fn, "fp": self.fp, "se": round(self.se, 4), "ppv": round(self.ppv, 4),
                "timing_ms": None if self.timing_ms is None else round(self.timing_ms, 1)}


def score_beats(reference: np.ndarray, detected: np.ndarray, fs: float, window_s: float = EC57_WINDOW_S) -> BeatScore:
    """Match ``detected`` sample indices to ``reference`` ones within ``window_s``."""
    ref, test = np.asarray(reference, int), np.asarray(detected, int)
    if len(ref) == 0 or len(test) == 0:
        return BeatScore(0, len(ref), len(test))
    cmp = processing.compare_annotations(ref, test, int(round(window_s * fs)))
    tp = int(cmp.tp)
    timing = None
    if tp:
        ri, ti = np.asarray(cmp.matched_ref_inds), np.asarray(cmp.matched_test_inds)
        timing = float(np.median(np.abs(ref[ri] - test[ti])) * 1000.0 / fs)
    return BeatScore(tp, len(ref) - tp, len(test) - tp, timing)


def gross(scores: Iterable[BeatScore]) -> BeatScore:
    """Pooled over records (EC57's gross statistics); timing: the median of the records' medians."""
    scores = list(scores)
    timings = [s.timing_ms for s in scores if s.timing_ms is not None]
    return BeatScore(sum(s.tp for s in scores), sum(s.fn for s in scores), sum(s.fp for s in scores),
                     float(np.median(timings)) if timings else None)
