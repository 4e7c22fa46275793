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


def score_classes(reference: np.ndarray, ref_kinds: list[str], detected: np.ndarray, test_kinds: list[str],
                  fs: float, window_s: float = EC57_WINDOW_S) -> dict[str, BeatScore]:
    """VEB (class V) and SVEB (class S) Se and +P from the beats matched as ``score_beats``
    matches them: a true positive is a matched pair of that class on both sides; a reference
    beat of the class missed or called otherwise is a false negative; a detection of the class
    matched to a reference beat of another class is a false positive (an unmatched detection
    counts against QRS +P only)."""
    ref, test = np.asarray(reference, int), np.asarray(detected, int)
    rk, tk = np.asarray(ref_kinds), np.asarray(test_kinds)
    pairs: list[tuple[int, int]] = []
    if len(ref) and len(test):
        cmp = processing.compare_annotations(ref, test, int(round(window_s * fs)))
        pairs = list(zip(np.asarray(cmp.matched_ref_inds, int), np.asarray(cmp.matched_test_inds, int), strict=True))
    out = {}
    for name, kind in (("veb", "V"), ("sveb", "S")):
        tp = sum(1 for r, t in pairs if rk[r] == kind and tk[t] == kind)
        fp = sum(1 for r, t in pairs if rk[r] != kind and tk[t] == kind)
        out[name] = BeatScore(tp, int((rk == kind).sum()) - tp, fp)
    return out
