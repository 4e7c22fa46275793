"""Where published segments go besides the Kafka topics: one small interface, several sinks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from models.rhythm.annotations import ANNOTATED, write_rows
from models.rhythm.beats import UNANNOTATED
from stream.segments import (
    GAIN,
    ArtifactRecord,
    BeatsRecord,
    GroundTruth,
    RhythmRecord,
    Segment,
    state_note,
)


def record_name(patient_id: str) -> str:
    """The WFDB record name of a patient's stream (letters and digits; the rest as '_')."""
    return "".join(c if c.isalnum() else "_" for c in patient_id)


class Sink(Protocol):
    async def segment(self, seg: Segment) -> None: ...

    async def annotation(self, ann: GroundTruth) -> None:
        """A state interval, a segment's beats or a rhythm episode (before the segment)."""

    async def removed(self, patient_id: str) -> None:
        """The patient was removed: its stream has ended (after its last segment and annotation)."""


@dataclass
class _WfdbRecord:
    name: str
    fs: int
    leads: tuple[str, ...]
    init_value: list[int]  # per lead, the first sample
    checksum: np.ndarray  # per lead, the sum of samples (WFDB's, mod 2**16)
    samples: int = 0
    units: str = "mV"


class WfdbSink:
    """Writes each patient's stream as a WFDB record (``<pid>.hea/.dat``) plus an annotation file
    (``.atr``) in MIT-BIH's codes that ``bxb`` and ``epicmp`` read: every beat (N, V, A, F, /, Q)
    and a '+' rhythm change with its aux note ((N, (AFIB, (VT, ...) where each rhythm episode
    begins (streams the rhythm layer draws), a noise annotation ('~', its kind, SNR and leads;
    '~ clean' where it ends) for each artifact, and a stretch drawn without beats (a morphology
    without a bank) marked unreadable ('~' subtype -1, aux ``unannotated``; '~ annotated' where
    beats come back); the state changes go to ``.state`` (a '+' each, its
    statements and rate: not rhythm codes, kept apart from them). Samples go to the ``.dat`` file as
    they are published, so a run of days holds only a few numbers per patient in memory (it held
    every segment until shutdown: 2 GB an hour at 100 patients); header and annotations are
    written when the patient is removed and at ``close()``."""

    def __init__(self, folder: str | Path, patients: set[str] | None = None) -> None:
        self.folder = Path(folder)
        self.patients = patients
        self._records: dict[str, _WfdbRecord] = {}
        # per patient, (sample, symbol, aux) rows for each annotation file: "atr" and "state"
        self._notes: dict[str, dict[str, list[tuple]]] = {}
        # stream time of each record's first sample, and its rate: known from the first segment's
        # beats, before its samples (and the record) arrive
        self._starts: dict[str, tuple[float, int]] = {}
        self._unannotated: set[str] = set()  # patients in a stretch drawn without beats

    def _wanted(self, patient_id: str) -> bool:
        return self.patients is None or patient_id in self.patients

    async def segment(self, seg: Segment) -> None:
        if not self._wanted(seg.patient_id):
            return
        q = seg.quantized  # int16, as published
        r = self._records.get(seg.patient_id)
        if r is None:
            r = self._records[seg.patient_id] = _WfdbRecord(record_name(seg.patient_id), seg.fs, seg.leads, [int(v) for v in q[0]],
                                                            np.zeros(len(seg.leads), np.int64), units=seg.units)
            self.folder.mkdir(parents=True, exist_ok=True)
            self._dat(r).write_bytes(b"")  # a record of this name from an earlier run is replaced
        with self._dat(r).open("ab") as f:  # format 16: little-endian int16, leads interleaved
            f.write(np.ascontiguousarray(q, "<i2").tobytes())
        r.samples += len(q)
        r.checksum = (r.checksum + q.sum(0, dtype=np.int64)) % 65536

    async def annotation(self, ann: GroundTruth) -> None:
        if not self._wanted(ann.patient_id):
            return
        r = self._records.get(ann.patient_id)  # none yet: the annotations of the first segment
        at = r.samples if r is not None else 0  # they come before their segment's samples
        notes = self._notes.setdefault(ann.patient_id, {"atr": [], "state": []})
        if isinstance(ann, BeatsRecord):
            self._starts.setdefault(ann.patient_id, (ann.start_time - at / ann.fs, ann.fs))
            notes["atr"] += [(at + i, sym, "") for i, sym in ann.beats]
        elif isinstance(ann, ArtifactRecord):  # a noise annotation where it begins and where it ends
            begins = self._sample(ann.patient_id, ann.start_time)
            if begins is not None:
                notes["atr"] += [(max(at, begins), "~", ann.aux),
                                 (self._sample(ann.patient_id, ann.end_time), "~", "clean")]
        elif isinstance(ann, RhythmRecord):
            if ann.end_time is None:  # where it begins, which may be inside the segment to come
                begins = self._sample(ann.patient_id, ann.start_time)
                s = at if begins is None else max(at, begins)
                if ann.rhythm == UNANNOTATED:  # WFDB's note for unreadable signal (subtype -1)
                    notes["atr"].append((s, "~", UNANNOTATED, -1))
                    self._unannotated.add(ann.patient_id)
                    return
                if ann.patient_id in self._unannotated:  # beats again
                    notes["atr"].append((s, "~", ANNOTATED, 0))
                    self._unannotated.discard(ann.patient_id)
                notes["atr"].append((s, "+", ann.aux))
        elif ann.end_time is None:
            notes["state"].append((at, "+", state_note(ann.state)))

    def _sample(self, patient_id: str, t: float) -> int | None:
        """The sample of the patient's record at stream time ``t`` (None: not known yet)."""
        if patient_id not in self._starts:
            return None
        start, fs = self._starts[patient_id]
        return int(round((t - start) * fs))

    async def removed(self, patient_id: str) -> None:
        """The stream has ended: its record is complete and can be read now."""
        r = self._records.get(patient_id)
        if r is not None:
            self._write_header(r, self._notes.get(patient_id, {}))

    def close(self) -> list[Path]:
        for pid, r in self._records.items():
            self._write_header(r, self._notes.get(pid, {}))
        return [self.folder / r.name for r in self._records.values()]

    def _dat(self, r: _WfdbRecord) -> Path:
        return self.folder / f"{r.name}.dat"

    def _write_header(self, r: _WfdbRecord, notes: dict[str, list[tuple]]) -> None:
        import wfdb

        n = len(r.leads)
        wfdb.Record(record_name=r.name, n_sig=n, fs=r.fs, sig_len=r.samples, file_name=[f"{r.name}.dat"] * n,
                    fmt=["16"] * n, adc_gain=[GAIN] * n, baseline=[0] * n, units=[r.units] * n, sig_name=list(r.leads),
                    checksum=[int(c) for c in r.checksum], init_value=r.init_value, adc_res=[16] * n,
                    adc_zero=[0] * n, block_size=[0] * n).wrheader(write_dir=str(self.folder))
        for extension, rows in notes.items():
            if rows:  # wrann refuses an empty file
                write_rows(r.name, self.folder, rows, extension)
