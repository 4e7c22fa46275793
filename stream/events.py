"""Condition-change events: the one JSON schema the service consumes (``schema_version`` 1).

    {"schema_version": 1, "event_id": "e-42", "patient_id": "bed-7",
     "type": "condition",                       # or "register", "remove"
     "effective_time": 1764081000.0,            # stream time, epoch s (= wall time at x1); optional:
                                                # default is the next segment not yet published;
                                                # the state holds from the first segment starting
                                                # at or after it, so changes scheduled ahead all
                                                # happen, in the order of their times
     "state": {"statements": {"AFIB": 1.0}, "heart_rate": 118, "age": 67, "sex": 1},
                                                # "contrast": true|false (optional) draws this
                                                # state with or without the model's contrastive
                                                # guidance (default: the service's setting)
     "transition_seconds": 0,                   # heart rate ramps linearly over this time
     "rhythm": {"name": "vt", "rate": 180, "duration": 8}}  # optional: beat timing and type
                                                # (models.rhythm.RHYTHMS); a condition event
                                                # needs a state, a rhythm or both

``artifact`` puts noise or an artifact on the patient's stream from ``effective_time`` (default:
the next segment not yet published) for its ``duration``: ``"artifact": {"kind": "ma", "snr": 6,
"duration": 20, "leads": ["II"]}`` (``models.stress.artifacts``: the kinds, their parameters and
limits; at most ``ARTIFACT_MAX_S`` seconds each).

``remove`` ends the patient's stream and deletes it from the registry: at once, or with an
``effective_time`` ahead, before the first segment starting at or after it (kept in the registry
until then). ``register`` adds ``reference``: {"wfdb": "path/to/record"} (or a list of them; read by the
service from its ``data_dir``, relative paths starting there, paths leading out of it refused;
``"start"`` and ``"seconds"`` pick a stretch of each, e.g. a minute of a half-hour record) or
{"samples": [[...12 leads...], ...], "fs": 250, "units": "mV"} (units mV, the default, uV or zscore;
``"leads": ["II", "V1"]`` names the columns, else they are the model's 12 in order) or
{"base_vector": [...]}. A WFDB record's leads are found by its signal names (MIT-BIH's MLII is II).
A reference in mV (a WFDB record whose header says so, or samples in mV or uV) gives the twin its
own amplitudes, and may have only some of the 12 leads (the others estimated from them,
``models.leads``); the others get the amplitude model's. Parsing either returns an Event or raises EventError whose
message is the reason written to the dead-letter record.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from models.conditions import VOCAB, CardiacState
from models.rhythm.programs import Rhythm, RhythmError

SCHEMA_VERSION = 1
EVENT_TYPES = ("condition", "register", "remove", "artifact")
ARTIFACT_MAX_S = 600.0  # one artifact's length: its waveform is made whole when it is scheduled
_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class EventError(ValueError):
    """Why a message cannot be applied; goes to the dead-letter topic with the original bytes."""


@dataclass(frozen=True)
class Event:
    event_id: str
    patient_id: str
    type: str
    state: CardiacState | None = None
    effective_time: float | None = None
    transition_seconds: float = 0.0
    reference: dict[str, Any] = field(default_factory=dict)
    rhythm: Rhythm | None = None
    artifact: dict[str, Any] | None = None  # as asked (checked by ``models.stress.artifacts.artifact``)

    def to_json(self) -> bytes:
        body: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "event_id": self.event_id,
                                "patient_id": self.patient_id, "type": self.type,
                                "transition_seconds": self.transition_seconds}
        if self.effective_time is not None:
            body["effective_time"] = self.effective_time
        if self.state is not None:
            body["state"] = state_to_dict(self.state)
        if self.reference:
            body["reference"] = self.reference
        if self.rhythm is not None:
            body["rhythm"] = self.rhythm.to_dict()
        if self.artifact is not None:
            body["artifact"] = self.artifact
        return json.dumps(body).encode()


def state_to_dict(s: CardiacState) -> dict[str, Any]:
    out: dict[str, Any] = {"statements": dict(s.statements), "heart_rate": s.heart_rate, "sex": s.sex}
    if not math.isnan(s.age):
        out["age"] = s.age
    if s.contrast is not None:
        out["contrast"] = s.contrast
    return out


def state_from_dict(d: Any, vocab: tuple[str, ...] = VOCAB) -> CardiacState:
    if not isinstance(d, dict):
        raise EventError("state must be an object")
    unknown = set(d) - {"statements", "heart_rate", "age", "sex", "contrast"}
    if unknown:
        raise EventError(f"unknown state fields: {sorted(unknown)}")
    st = d.get("statements", {})
    if not isinstance(st, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                           for v in st.values()):
        raise EventError("state.statements must map statement codes to numbers in [0, 1]")
    try:
        hr = float(d.get("heart_rate", 70.0))
        age = float(d["age"]) if d.get("age") is not None else float("nan")
        sex = d.get("sex", -1)
        if isinstance(sex, bool) or not isinstance(sex, int):
            raise TypeError(f"sex must be 0, 1 or -1, got {sex!r}")
        return CardiacState({str(k): float(v) for k, v in st.items()}, hr, age, sex,
                            d.get("contrast")).validate(vocab)
    except (TypeError, ValueError, OverflowError) as exc:  # "sex": Infinity is valid JSON to Python
        raise EventError(f"invalid state: {exc}") from exc


def json_value(raw: bytes | str) -> Any:
    """Bytes from outside (a message, a request body, a changelog record) as JSON; EventError,
    a ValueError, for anything unreadable."""
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EventError(f"not JSON: {exc}") from exc
    except RecursionError:  # a few hundred kB of "[[[[..." is valid JSON Python will not nest
        raise EventError("not JSON this service reads: nested too deeply") from None


def parse_event(raw: bytes | str, vocab: tuple[str, ...] = VOCAB) -> Event:
    """Decode and validate one message value."""
    d = json_value(raw)
    if not isinstance(d, dict):
        raise EventError("event must be a JSON object")
    if d.get("schema_version") != SCHEMA_VERSION:
        raise EventError(f"unsupported schema_version {d.get('schema_version')!r} (expected {SCHEMA_VERSION})")
    for key in ("event_id", "patient_id"):
        if not isinstance(d.get(key), str) or not _ID.match(d[key]):
            raise EventError(f"{key} must be 1-128 characters of [A-Za-z0-9._:-]")
    typ = d.get("type", "condition")
    if typ not in EVENT_TYPES:
        raise EventError(f"type must be one of {EVENT_TYPES}, got {typ!r}")
    eff = d.get("effective_time")
    if eff is not None and (not isinstance(eff, (int, float)) or isinstance(eff, bool) or not math.isfinite(eff)):
        raise EventError("effective_time must be epoch seconds")
    trans = d.get("transition_seconds", 0)
    if not isinstance(trans, (int, float)) or isinstance(trans, bool) or not 0 <= trans <= 3600:
        raise EventError("transition_seconds must be a number in [0, 3600]")
    state = state_from_dict(d["state"], vocab) if "state" in d else None
    rhythm = None
    if d.get("rhythm") is not None:
        if typ == "remove":
            raise EventError("a remove event takes no rhythm")
        try:
            rhythm = Rhythm.from_dict(d["rhythm"])
        except (RhythmError, TypeError) as exc:
            raise EventError(f"invalid rhythm: {exc}") from None
    if typ == "condition" and state is None and rhythm is None:
        raise EventError("a condition event needs a state, a rhythm or both")
    artifact = d.get("artifact")
    if (artifact is not None) != (typ == "artifact"):
        raise EventError("an artifact event needs an artifact, and only an artifact event takes one")
    if artifact is not None:
        artifact = checked_artifact(artifact)
        if state is not None or rhythm is not None:
            raise EventError("an artifact event takes no state or rhythm")
    ref = d.get("reference", {})
    if typ == "register":
        if not isinstance(ref, dict) or len(set(ref) & {"wfdb", "samples", "base_vector"}) != 1:
            raise EventError("register needs reference with exactly one of wfdb, samples, base_vector")
    return Event(d["event_id"], d["patient_id"], typ, state, None if eff is None else float(eff),
                 float(trans), ref if typ == "register" else {}, rhythm, artifact)


def checked_artifact(d: Any) -> dict[str, Any]:
    """An artifact request (kind, duration, snr, leads, the kind's parameters) checked against
    ``models.stress.artifacts``; EventError with the reason."""
    from models.data.ptbxl import LEADS
    from models.stress.artifacts import ArtifactError, artifact

    if not isinstance(d, dict):
        raise EventError("artifact must be an object")
    if "at" in d:
        raise EventError("artifact takes no at: the event's effective_time says when")
    try:
        artifact({**d, "at": 0.0}, LEADS, "artifact")
    except (ArtifactError, TypeError) as exc:
        raise EventError(f"invalid {exc}") from None
    if d["duration"] > ARTIFACT_MAX_S:
        raise EventError(f"artifact duration must be at most {ARTIFACT_MAX_S:g} s")
    return dict(d)


def new_event_id() -> str:
    return f"e-{time.time_ns():x}"
