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
