"""Output records: twin ECG segments and ground-truth annotations (JSON, keyed by patient id).

Segment value:
    {"schema_version": 2, "patient_id": "bed-7", "seq": 12, "start_time": 1764081024.0,
     "fs": 250, "leads": ["I", ...], "gain": 1000.0, "units": "mV",
     "samples_b64": "<little-endian int16, samples x leads, row-major>", "n_samples": 500,
     "state": {...}, "event_id": "e-42", "model_version": "default-..."}
Physical value = int16 / gain, in ``units``: millivolts from schema version 2 on (each lead the
model's z-score times the patient's lead scale, ``models.amplitude``); version 1 carried per-lead
z-scores (``units`` "zscore"), and ``decode_segment`` reads both and keeps the units it found.

Annotation values, told apart by ``kind`` (a record without one is a state interval):
- ``state``: one per state interval; re-sent with ``end_time`` when it closes. A heart-rate
  transition opens one interval per segment of its ramp, each with the rate that segment carries
  and the same ``event_id``: an event's first interval is where it took effect.
    {"schema_version": 1, "kind": "state", "patient_id": "bed-7", "event_id": "e-42", "state": {...},
     "start_time": 1764081024.0, "end_time": null, "start_seq": 12}
- ``beats``: every beat of a segment, sent with it: its sample within the segment, its stream
  time and its MIT-BIH symbol (N, V, A, F, /, Q).
    {"schema_version": 1, "kind": "beats", "patient_id": "bed-7", "seq": 12, "start_time": ...,
     "fs": 250, "beats": [{"sample": 212, "time": 1764081024.848, "symbol": "N"}, ...]}
- ``rhythm``: one per rhythm episode (``models.rhythm.RHYTHMS`` names, MIT-BIH's aux note);
  re-sent with ``end_time`` when it closes. ``"rhythm": "unannotated"`` (aux "") is a stretch
  drawn without beats (its morphology gave no bank): its segments have no beats record.
    {"schema_version": 1, "kind": "rhythm", "patient_id": "bed-7", "rhythm": "vt", "aux": "(VT",
     "start_time": 1764081030.2, "end_time": null}
- ``artifact``: noise or an artifact on the stream (``models.stress.artifacts``), sent with the
  segment it begins in; its end is known then.
    {"schema_version": 1, "kind": "artifact", "patient_id": "bed-7", "event_id": "e-43",
     "artifact": "ma", "start_time": 1764081040.0, "end_time": 1764081060.0, "leads": ["II"],
     "snr_db": 6}
"""

from __future__ import annotations

import base64
import functools
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

GAIN = 1000.0
SEGMENT_SCHEMA = 2  # 2: samples in mV; 1: per-lead z-scores


def quantize(x: np.ndarray) -> np.ndarray:
    """float samples in units -> little-endian int16 at ``GAIN``, saturating at +-32767 (WFDB
    reads -32768 in a format-16 file as a missing sample)."""
    return np.clip(np.round(x * GAIN), -32767, 32767).astype("<i2")


def dumps_spliced(d: dict[str, Any], key: str) -> bytes:
    """``json.dumps(d).encode()`` with the base64 string ``d[key]`` spliced in rather than passed
    through the encoder, which would scan all of it for characters to escape that base64 never
    contains. Half the encoding cost of a segment; the service encodes every segment and every
    stream position, and at GPU rates that, not the model, is what limits a worker. A value that
    is not a string (no tail yet: None) goes through the encoder like any other."""
    b64 = d[key]
    if not isinstance(b64, str):
        return json.dumps(d).encode()
    # every string value is escaped by the encoder, so the key itself is the only unescaped match
    return json.dumps({**d, key: ""}).replace(f'"{key}": ""', f'"{key}": "{b64}"', 1).encode()


@dataclass
class Segment:
    patient_id: str
    seq: int
    start_time: float
    fs: int
    leads: tuple[str, ...]
    samples: np.ndarray  # (n, leads) float32 in units
    state: dict[str, Any]
    event_id: str | None
    model_version: str
    units: str = "mV"

    @property
    def duration(self) -> float:
        return len(self.samples) / self.fs

    @functools.cached_property
    def quantized(self) -> np.ndarray:
        """The samples as published, int16 (physical = value / gain): computed once per segment,
        which the Kafka record, the dashboard and the stream position all use."""
        return quantize(self.samples)

    def to_dict(self) -> dict[str, Any]:
        q = self.quantized
        return {"schema_version": SEGMENT_SCHEMA if self.units == "mV" else 1, "patient_id": self.patient_id,
                "seq": self.seq, "start_time": self.start_time, "fs": self.fs, "leads": list(self.leads),
                "gain": GAIN, "units": self.units, "n_samples": int(len(q)),
                "samples_b64": base64.b64encode(q.tobytes()).decode(), "state": self.state,
                "event_id": self.event_id, "model_version": self.model_version}

    def to_json(self, **extra: Any) -> bytes:
        """The segment value (with ``extra`` fields first)."""
        return dumps_spliced({**extra, **self.to_dict()}, "samples_b64")


def decode_segment(raw: bytes | str) -> Segment:
    """A segment value of either schema version: ``units`` says which (mV, or z-scores from a
    version-1 producer)."""
    d = json.loads(raw)
    n, leads = d["n_samples"], d["leads"]
    q = np.frombuffer(base64.b64decode(d["samples_b64"]), dtype="<i2").reshape(n, len(leads))
    units = d.get("units", "zscore" if d.get("schema_version", 1) < 2 else "mV")
    return Segment(d["patient_id"], d["seq"], d["start_time"], d["fs"], tuple(leads),
                   q.astype(np.float32) / d["gain"], d["state"], d.get("event_id"), d["model_version"], units)


@dataclass(frozen=True)
class Annotation:
    """One state interval of a stream's ground truth (the annotations topic): open while
    ``end_time`` is None, closed by a second record with it."""

    patient_id: str
    event_id: str | None
    state: dict
    start_time: float
    start_seq: int
    end_time: float | None = None

    def to_json(self) -> bytes:
        return json.dumps({"schema_version": 1, "kind": "state", "patient_id": self.patient_id,
                           "event_id": self.event_id, "state": self.state, "start_time": self.start_time,
                           "end_time": self.end_time, "start_seq": self.start_seq}).encode()

    @staticmethod
    def from_json(raw: bytes | str) -> Annotation:
        """A state annotation record as ``to_json`` writes it; ValueError for anything else
        (beats and rhythm records among them)."""
        d = json.loads(raw)
        if not isinstance(d, dict) or not isinstance(d.get("patient_id"), str) or not isinstance(d.get("state"), dict) \
                or d.get("kind", "state") != "state":
            raise ValueError("not a state annotation record")
        return Annotation(d["patient_id"], d.get("event_id"), d["state"], float(d["start_time"]),
                          int(d["start_seq"]), None if d.get("end_time") is None else float(d["end_time"]))

    def frame(self) -> dict:
        """The record as a WebSocket frame's fields."""
        return json.loads(self.to_json())


@dataclass(frozen=True)
class BeatsRecord:
    """The beats of one published segment: (sample within it, MIT-BIH symbol) each."""

    patient_id: str
    seq: int
    start_time: float
    fs: int
    beats: tuple[tuple[int, str], ...]

    def to_json(self) -> bytes:
        return json.dumps(self.frame()).encode()

    def frame(self) -> dict:
        return {"schema_version": 1, "kind": "beats", "patient_id": self.patient_id, "seq": self.seq,
                "start_time": self.start_time, "fs": self.fs,
                "beats": [{"sample": i, "time": round(self.start_time + i / self.fs, 6), "symbol": sym}
                          for i, sym in self.beats]}


@dataclass(frozen=True)
class RhythmRecord:
    """A rhythm episode: open while ``end_time`` is None, closed by a second record with it."""

    patient_id: str
    rhythm: str
    aux: str
    start_time: float
    end_time: float | None = None

    def to_json(self) -> bytes:
        return json.dumps(self.frame()).encode()

    def frame(self) -> dict:
        return {"schema_version": 1, "kind": "rhythm", "patient_id": self.patient_id, "rhythm": self.rhythm,
                "aux": self.aux, "start_time": self.start_time, "end_time": self.end_time}


@dataclass(frozen=True)
class ArtifactRecord:
    """Noise or an artifact on the stream from ``start_time`` to ``end_time`` (known when it
    begins: an artifact has its duration), on ``leads`` (None: all), at ``snr_db`` (additive kinds)."""

    patient_id: str
    event_id: str
    artifact: str
    start_time: float
    end_time: float
    leads: tuple[str, ...] | None = None
    snr_db: float | None = None

    def to_json(self) -> bytes:
        return json.dumps(self.frame()).encode()

    def frame(self) -> dict:
        return {"schema_version": 1, "kind": "artifact", "patient_id": self.patient_id, "event_id": self.event_id,
                "artifact": self.artifact, "start_time": self.start_time, "end_time": self.end_time,
                "leads": None if self.leads is None else list(self.leads), "snr_db": self.snr_db}

    @property
    def aux(self) -> str:
        """The aux note of its noise annotation (``~``) in a WFDB annotation file."""
        return noise_note(self.artifact, self.snr_db, self.leads)


def noise_note(kind: str, snr_db: float | None, leads: tuple[str, ...] | None) -> str:
    """The aux note of an artifact's noise annotation (``~``): ``ma 6dB II,V1``, ``lead_off all``."""
    level = "" if snr_db is None else f" {snr_db:g}dB"
    return f"{kind}{level} {'all' if leads is None else ','.join(leads)}"


def state_note(state: dict) -> str:
    """The aux note of a state change in a WFDB ``.state`` file: ``(AFIB+PVC HR110``."""
    label = "+".join(sorted(state.get("statements", {}))) or "none"
    return f"({label} HR{state.get('heart_rate', 0):.0f}"


GroundTruth = Annotation | BeatsRecord | RhythmRecord | ArtifactRecord


def annotation(patient_id: str, event_id: str | None, state: dict, start_time: float,
               start_seq: int, end_time: float | None = None) -> Annotation:
    return Annotation(patient_id, event_id, state, start_time, start_seq, end_time)
