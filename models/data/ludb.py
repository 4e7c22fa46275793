"""LUDB: 12-lead 500 Hz records in raw millivolts with expert P/QRS/T delineation per lead."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.data.ptbxl import DataError, read_wfdb_signal

LUDB_LEADS = ("i", "ii", "iii", "avr", "avl", "avf", "v1", "v2", "v3", "v4", "v5", "v6")
WAVE_NAMES = {"p": "P", "N": "QRS", "t": "T"}


@dataclass(frozen=True)
class Wave:
    kind: str  # "P", "QRS" or "T"
    onset: int
    peak: int
    offset: int


class LUDB:
    """The LUDB folder (``ludb/data/N.hea`` etc.)."""

    fs = 500

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.data = self.root / "data" if (self.root / "data").is_dir() else self.root
        if not any(self.data.glob("*.hea")):
            raise DataError(f"no LUDB records under {self.data}")

    @property
    def record_ids(self) -> list[int]:
        return sorted(int(p.stem) for p in self.data.glob("*.hea") if p.stem.isdigit())

    def signal(self, record_id: int) -> np.ndarray:
        """(5000, 12) float32 in mV."""
        return read_wfdb_signal(self.data / str(record_id), expect_fs=self.fs)

    def waves(self, record_id: int, lead: str = "ii") -> list[Wave]:
        """Delineated waves of one lead, from the ``(`` onset / peak / ``)`` offset triplets."""
        import wfdb

        if lead not in LUDB_LEADS:
            raise ValueError(f"unknown LUDB lead {lead!r}")
        path = self.data / str(record_id)
        try:
            ann = wfdb.rdann(str(path), lead)
        except FileNotFoundError as exc:
            raise DataError(f"missing LUDB annotation {path}.{lead}") from exc
        except Exception as exc:
            raise DataError(f"corrupt LUDB annotation {path}.{lead}: {exc}") from exc
        out: list[Wave] = []
        sym, idx = ann.symbol, ann.sample
        for i, s in enumerate(sym):
            if s in WAVE_NAMES and 0 < i < len(sym) - 1 and sym[i - 1] == "(" and sym[i + 1] == ")":
                out.append(Wave(WAVE_NAMES[s], int(idx[i - 1]), int(idx[i]), int(idx[i + 1])))
        return out


def beat_intervals(waves: list[Wave], fs: float) -> dict[str, float]:
    """Median PR, QRS and QT (ms) of one lead's annotated beats: PR from the P onset before each
    QRS, QT to the offset of the T after it (NaN where the lead has no such pair)."""
    ps = [w for w in waves if w.kind == "P"]
    ts = [w for w in waves if w.kind == "T"]
    pr, qrs, qt = [], [], []
    for q in (w for w in waves if w.kind == "QRS"):
        p = [w for w in ps if w.offset <= q.onset and q.onset - w.onset < 0.3 * fs]
        if p:
            pr.append(q.onset - p[-1].onset)
        qrs.append(q.offset - q.onset)
        t = [w for w in ts if w.onset >= q.offset and w.offset - q.onset < 0.7 * fs]
        if t:
            qt.append(t[0].offset - q.onset)
    med = lambda v: float(np.median(v) * 1000.0 / fs) if v else float("nan")  # noqa: E731
    return {"pr_ms": med(pr), "qrs_ms": med(qrs), "qt_ms": med(qt)}


def expert_intervals(db: LUDB, record_id: int) -> dict[str, float]:
    """The record's intervals by the experts: the median over the 12 leads' annotations."""
    per_lead = [beat_intervals(db.waves(record_id, lead), db.fs) for lead in LUDB_LEADS]
    return {k: float(np.nanmedian([d[k] for d in per_lead])) if any(np.isfinite(d[k]) for d in per_lead)
            else float("nan") for k in ("pr_ms", "qrs_ms", "qt_ms")}
