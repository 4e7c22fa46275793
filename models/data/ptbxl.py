"""PTB-XL in its own layout: ``ptbxl_database.csv`` + ``scp_statements.csv`` + WFDB records.

The same code reads the shared 250 Hz subset and the full database: the sampling rate picks
the filename column (``filename_lr`` 100 Hz, ``filename_hr`` 500 Hz, ``filename_250`` 250 Hz).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

FILENAME_COLUMNS = {100: "filename_lr", 250: "filename_250", 500: "filename_hr"}
LEADS = ("I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")
SUPERCLASSES = ("NORM", "MI", "STTC", "CD", "HYP")


class DataError(RuntimeError):
    """A dataset file is missing or unreadable; the message names the file."""


@dataclass(frozen=True)
class Record:
    ecg_id: int
    patient_id: int
    signal: np.ndarray  # (samples, leads) float32
    fs: int
    scp_codes: dict[str, float]
    age: float
    sex: int  # PTB-XL: 0 male, 1 female


class ScpStatements:
    """The SCP-ECG statement table: which code is diagnostic, form or rhythm, and its superclass."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise DataError(f"missing SCP statement table: {path}")
        try:
            self.table = pd.read_csv(path, index_col=0)
        except Exception as exc:
            raise DataError(f"cannot read {path}: {exc}") from exc

    def codes(self, kind: str) -> list[str]:
        """Codes whose ``diagnostic``, ``form`` or ``rhythm`` flag is set."""
        return sorted(self.table.index[self.table[kind].fillna(0) == 1])

    def superclasses(self, scp_codes: dict[str, float]) -> set[str]:
        """Diagnostic superclasses (NORM, MI, STTC, CD, HYP) of a record's statements."""
        out = set()
        for code in scp_codes:
            if code in self.table.index:
                cls = self.table.at[code, "diagnostic_class"]
                if isinstance(cls, str):
                    out.add(cls)
        return out


class PTBXL:
    """Index of a PTB-XL-layout folder; signals are read lazily, one record at a time."""

    def __init__(self, root: str | Path, sampling_rate: int = 250) -> None:
        self.root = Path(root)
        if sampling_rate not in FILENAME_COLUMNS:
            raise ValueError(f"sampling_rate must be one of {sorted(FILENAME_COLUMNS)}")
        self.fs = sampling_rate
        db = self.root / "ptbxl_database.csv"
        if not db.is_file():
            raise DataError(f"missing PTB-XL index: {db}")
        try:
            df = pd.read_csv(db, index_col="ecg_id")
        except Exception as exc:
            raise DataError(f"cannot read {db}: {exc}") from exc
        col = FILENAME_COLUMNS[sampling_rate]
        if col not in df.columns:
            raise DataError(f"{db} has no column {col!r} for {sampling_rate} Hz records")
        df["scp_codes"] = df["scp_codes"].apply(ast.literal_eval)
        df["patient_id"] = df["patient_id"].astype(int)
        self.df = df
        self.filename_column = col

    @cached_property
    def statements(self) -> ScpStatements:
        return ScpStatements(self.root / "scp_statements.csv")

    @property
    def ecg_ids(self) -> list[int]:
        return [int(i) for i in self.df.index]

    def __len__(self) -> int:
        return len(self.df)

    def path(self, ecg_id: int) -> Path:
        return self.root / self.df.at[ecg_id, self.filename_column]

    def record(self, ecg_id: int) -> Record:
        """Read one record; a missing or corrupt file raises DataError naming it."""
        row = self.df.loc[ecg_id]
        signal = read_wfdb_signal(self.path(ecg_id), expect_fs=self.fs)
        return Record(
            ecg_id=int(ecg_id),
            patient_id=int(row.patient_id),
            signal=signal,
            fs=self.fs,
            scp_codes=dict(row.scp_codes),
            age=float(row.age) if pd.notna(row.age) else float("nan"),
            sex=int(row.sex) if pd.notna(row.sex) else -1,
        )

    def records(self, ecg_ids: Iterable[int]) -> Iterable[Record]:
        for i in ecg_ids:
            yield self.record(i)

    def split(self, holdout_folds: tuple[int, ...] = (9, 10)) -> tuple[list[int], list[int]]:
        """Patient-wise train / held-out ecg_ids.

        PTB-XL's ``strat_fold`` already keeps each patient in one fold; where it is absent a
        stable hash of the patient id decides. Either way no patient is on both sides.
        """
        if "strat_fold" in self.df.columns and self.df["strat_fold"].notna().all():
            fold = self.df["strat_fold"].astype(int)
        else:
            fold = (self.df["patient_id"] * 2654435761 % 2**32) % 10 + 1
        held = fold.isin(holdout_folds)
        # Enforce patient-wise even if a fold column were inconsistent: a patient with any
        # held-out record is held out entirely.
        held_patients = set(self.df.loc[held, "patient_id"])
        held = self.df["patient_id"].isin(held_patients)
        return [int(i) for i in self.df.index[~held]], [int(i) for i in self.df.index[held]]


def read_wfdb_signal(path: str | Path, expect_fs: int | None = None, sampfrom: int = 0,
                     sampto: int | None = None) -> np.ndarray:
    """(samples, leads) float32 from a WFDB record path (without extension), samples
    ``sampfrom`` to ``sampto`` (its end where None)."""
    import wfdb

    path = Path(path)
    try:
        sig, fields = wfdb.rdsamp(str(path), sampfrom=sampfrom, sampto=sampto)
    except FileNotFoundError as exc:
        raise DataError(f"missing WFDB record: {path} ({exc.filename or path})") from exc
    except Exception as exc:
        raise DataError(f"corrupt WFDB record {path}: {exc}") from exc
    if expect_fs is not None and int(fields["fs"]) != expect_fs:
        raise DataError(f"{path}: sampling rate {fields['fs']} Hz, expected {expect_fs}")
    if not np.isfinite(sig).all():
        sig = np.nan_to_num(sig)
    return sig.astype(np.float32)
