"""Where published segments go besides the Kafka topics: one small interface, several sinks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import numpy as np

from stream.segments import GAIN, Segment


class Sink(Protocol):
    async def segment(self, seg: Segment) -> None: ...

    async def annotation(self, patient_id: str, raw: bytes) -> None: ...

    async def removed(self, patient_id: str) -> None:
        """The patient was removed: its stream has ended (after its last segment and annotation)."""


class WfdbSink:
    """Writes each patient's stream as a WFDB record (``<pid>.hea/.dat``) plus an annotation file
    (``.atr``, one '+' rhythm annotation per state change) when ``close()`` is called."""

    def __init__(self, folder: str | Path, patients: set[str] | None = None) -> None:
        self.folder = Path(folder)
        self.patients = patients
        self._chunks: dict[str, list[np.ndarray]] = {}  # int16 samples per patient
        self._notes: dict[str, list[tuple[int, str]]] = {}
        self._meta: dict[str, tuple[int, tuple[str, ...]]] = {}
        self._count: dict[str, int] = {}

    async def segment(self, seg: Segment) -> None:
        if self.patients is not None and seg.patient_id not in self.patients:
            return
        self._chunks.setdefault(seg.patient_id, []).append(seg.quantized)  # int16, as published
        self._meta[seg.patient_id] = (seg.fs, seg.leads)
        self._count[seg.patient_id] = self._count.get(seg.patient_id, 0) + len(seg.samples)

    async def annotation(self, patient_id: str, raw: bytes) -> None:
        d = json.loads(raw)
        if d["end_time"] is None and (self.patients is None or patient_id in self.patients):
            label = "+".join(sorted(d["state"].get("statements", {}))) or "none"
            note = f"({label} HR{d['state'].get('heart_rate', 0):.0f}"
            self._notes.setdefault(patient_id, []).append((self._count.get(patient_id, 0), note))

    async def removed(self, patient_id: str) -> None:
        """Nothing to do: the record so far is written with the others at ``close()``."""

    def close(self) -> list[Path]:
        import wfdb

        self.folder.mkdir(parents=True, exist_ok=True)
        written = []
        for pid, chunks in self._chunks.items():
            fs, leads = self._meta[pid]
            q = np.concatenate(chunks)
            name = "".join(c if c.isalnum() else "_" for c in pid)
            wfdb.wrsamp(name, fs=fs, units=["z"] * len(leads), sig_name=list(leads), d_signal=q,
                        fmt=["16"] * len(leads), adc_gain=[GAIN] * len(leads), baseline=[0] * len(leads),
                        write_dir=str(self.folder))
            notes = self._notes.get(pid, [])
            if notes:
                wfdb.wrann(name, "atr", np.array([n[0] for n in notes]), np.array(["+"] * len(notes)),
                           aux_note=[n[1] for n in notes], write_dir=str(self.folder))
            written.append(self.folder / name)
        return written
