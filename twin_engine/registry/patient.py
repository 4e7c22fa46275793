"""A twinned patient: base vector, model version, state, typed state history, stream position.

One policy bounds the history: every change still to come is kept (a restored stream makes them
all), at most SCHEDULED_LIMIT of them (about 180 bytes each, and the record is written whole on
each change: this keeps it far below Kafka's 1 MB); the changes already in effect are trimmed
down to HISTORY_LIMIT entries.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from models.conditions import CardiacState
from models.rhythm import Rhythm
from stream.events import json_value, state_from_dict, state_to_dict
from stream.segments import dumps_spliced

HISTORY_LIMIT = 50
ARTIFACTS_LIMIT = 20  # artifacts a patient may have not yet over (each is made whole when drawn)
SCHEDULED_LIMIT = 500
SEEN_EVENTS_LIMIT = 256
POSITION_FIELDS = ("next_seq", "stream_start", "published_event_id", "published_state", "published_since",
                   "tail_b64", "segment_seconds", "rhythm_state", "published_rhythm")


@dataclass(frozen=True)
class Change:
    """One entry of a patient's state history: a state asked for by an event.

    Attributes:
        event_id: the event that asked for it.
        state: the state, as ``stream.events.state_to_dict`` writes it.
        seq: the patient's next segment when it was applied.
        time: wall-clock epoch seconds when it was applied.
        at: the stream time it holds from; None: from the stream's start (a registration).
        transition: seconds of heart-rate ramp from ``at``.
        rhythm: the rhythm the event named (``Rhythm.to_dict``), if it named one.
    """

    event_id: str
    state: dict[str, Any]
    seq: int
    time: float
    at: float | None = None
    transition: float = 0.0
    rhythm: dict[str, Any] | None = None

    def named_rhythm(self) -> Rhythm | None:
        """The rhythm the event named, if it named one."""
        return None if self.rhythm is None else Rhythm.from_dict(self.rhythm)

    @property
    def holds_from(self) -> float:
        """The stream time it holds from (-inf: from the stream's start)."""
        return float("-inf") if self.at is None else self.at

    def to_dict(self) -> dict[str, Any]:
        """The record's form (``at`` and ``transition`` only where it has a time)."""
        d = {"event_id": self.event_id, "state": self.state, "seq": self.seq, "time": self.time}
        if self.at is not None:
            d.update(at=self.at, transition=self.transition)
        if self.rhythm is not None:
            d["rhythm"] = self.rhythm
        return d

    @staticmethod
    def from_dict(d: Any) -> Change:
        """From a record; ValueError for anything that is not a history entry."""
        if not isinstance(d, dict) or not isinstance(d.get("event_id"), str) or not isinstance(d.get("state"), dict):
            raise ValueError("a history entry is an object with an event_id and a state")
        at, transition = d.get("at"), d.get("transition", 0.0)
        for name, v in (("at", at), ("transition", transition), ("time", d.get("time", 0.0))):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise ValueError(f"history entry {name} must be a number, got {v!r}")
        seq = d.get("seq", 0)
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise ValueError(f"history entry seq must be a count, got {seq!r}")
        rhythm = d.get("rhythm")
        if rhythm is not None and not isinstance(rhythm, dict):
            raise ValueError("history entry rhythm must be an object")
        return Change(d["event_id"], d["state"], seq, float(d.get("time", 0.0)),
                      None if at is None else float(at), float(transition), rhythm)


@dataclass
class Patient:
    patient_id: str
    base_vector: list[float]
    model_version: str
    state: dict[str, Any]
    state_event_id: str | None = None
    state_since_seq: int = 0
    history: list[Change] = field(default_factory=list)
    seen_events: list[str] = field(default_factory=list)
    next_seq: int = 0
    stream_start: float | None = None  # stream time of sample 0 (epoch seconds)
    segment_seconds: float | None = None  # the segment length ``next_seq`` counts in
    published_event_id: str | None = None  # state of the last published segment ...
    published_state: dict[str, Any] | None = None
    published_since: float | None = None  # ... and the stream time it began
    tail_b64: str | None = None  # last samples published (int16, see stream.segments): continuity
    # the beat schedule after the last published segment (models.rhythm.RhythmTrack.to_dict), and
    # the rhythm episode open there (name, start time): a restored stream's beats go on from them
    rhythm_state: dict[str, Any] | None = None
    published_rhythm: list | None = None
    remove_at: float | None = None  # stream time of a scheduled removal (a remove event's effective_time)
    remove_event_id: str | None = None
    # the ``TwinModel.encoder_id`` its base vector came from ("" in records written before it
    # was kept): a model with another one would stream someone else
    encoder_id: str = ""
    # noise and artifacts on the stream (``models.stress.artifacts.Artifact.to_dict`` in stream
    # time, with the ``event_id`` that asked and the artifact's ``seed``), until they are over
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    # each lead's scale in mV (``models.amplitude``: the twin's z-scores times it are its mV) and
    # where it came from: "reference" (measured) or "amplitude model" (predicted); None in
    # records written before segments were in mV, whose stream predicts them when it starts
    mv_scale: list[float] | None = None
    mv_source: str | None = None
    # the leads its reference lacked, estimated from the others (``models.leads``): the twin's
    # base vector and those leads' scales rest on the estimate
    estimated_leads: list[str] = field(default_factory=list)
    # the statements it was registered with (its reference's state; None in records from before
    # they were kept): a later state adding others is drawn with contrastive guidance
    registered_statements: dict[str, float] | None = None

    def add_artifact(self, entry: dict[str, Any], now: float) -> None:
        """Schedule an artifact; those over by stream time ``now`` are forgotten."""
        self.artifacts = [a for a in self.artifacts if a["end"] > now] + [entry]

    def artifacts_after(self, now: float) -> int:
        """How many artifacts are not over by stream time ``now``."""
        return sum(a["end"] > now for a in self.artifacts)

    def __post_init__(self) -> None:
        # the stream position the broker has acknowledged: what ``to_json`` writes, so that a
        # patient record written while a segment is in flight never carries a position past it
        # (killed then, a restart resumed after a segment that never went out: a gap)
        self._acked = self.position()

    def acknowledge(self, position: dict[str, Any]) -> None:
        """``position`` (from ``position()``) is durable: the broker took its record."""
        self._acked = dict(position)

    @property
    def cardiac_state(self) -> CardiacState:
        return state_from_dict(self.state)

    def base(self) -> np.ndarray:
        return np.asarray(self.base_vector, np.float32)

    def saw(self, event_id: str) -> bool:
        """Whether the event was applied: among the last ``SEEN_EVENTS_LIMIT``, or in the history,
        which keeps every change still to come however many a timeline scheduled."""
        return event_id in self.seen_events or any(h.event_id == event_id for h in self.history)

    def remember(self, event_id: str) -> None:
        self.seen_events.append(event_id)
        del self.seen_events[:-SEEN_EVENTS_LIMIT]

    def set_state(self, state: CardiacState, event_id: str, seq: int, when: float, at: float | None = None,
                  transition: float = 0.0, now: float | None = None, rhythm: Rhythm | None = None) -> None:
        """The state last asked for. ``at``: the stream time it holds from (with the heart-rate
        ``transition`` seconds), kept in the history so that a restored stream still makes the
        changes scheduled ahead; without it (registration) it holds from the stream's start.
        ``now``: the stream time of the next segment, before which changes are in the past.
        ``rhythm``: the rhythm the event named, kept with its entry."""
        self.state = state_to_dict(state)
        self.state_event_id = event_id
        self.state_since_seq = seq
        self.history.append(Change(event_id, self.state, seq, when, at, transition if at is not None else 0.0,
                                   None if rhythm is None else rhythm.to_dict()))
        self._trim_history(float("-inf") if now is None else now)

    def _trim_history(self, now: float) -> None:
        """Down to ``HISTORY_LIMIT`` entries where it can be: the changes wholly in effect by
        ``now`` go, oldest first, all but the last of them (the state the rest start from).
        A change still to come is never dropped, so a restored stream makes every one (the
        service caps how many a patient may have)."""
        excess = len(self.history) - HISTORY_LIMIT
        if excess <= 0:
            return
        past = [i for i, h in enumerate(self.history) if h.holds_from + h.transition <= now]
        past.sort(key=lambda i: (self.history[i].holds_from, i))
        drop = set(past[:-1][:excess])
        self.history = [h for i, h in enumerate(self.history) if i not in drop]

    def scheduled_after(self, now: float) -> int:
        """How many changes in the history are still to come after stream time ``now``."""
        return sum(h.holds_from > now for h in self.history)

    def may_schedule(self, now: float) -> bool:
        """Whether one more change may be scheduled ahead (``SCHEDULED_LIMIT``)."""
        return self.scheduled_after(now) < SCHEDULED_LIMIT

    def start_time(self, seq: int, seconds: float) -> float:
        """Stream time at which segment ``seq`` starts, counted in the length the stream position
        records (``seconds`` for a record written before positions kept it)."""
        return float(self.stream_start) + seq * (self.segment_seconds or seconds)

    def view(self, segment_seconds: float | None) -> dict[str, Any]:
        """What the HTTP API shows of a patient (``segment_seconds`` None: not streaming).
        ``state`` is the last one asked for; ``published_state`` the one streaming now, and
        ``scheduled`` the changes still to come (their ``at`` after the next segment)."""
        live = segment_seconds is not None and self.stream_start is not None
        nxt = self.start_time(self.next_seq, segment_seconds) if live else None
        return {"patient_id": self.patient_id, "model_version": self.model_version, "state": self.state,
                "state_event_id": self.state_event_id, "next_seq": self.next_seq,
                "published_state": self.published_state, "history": [h.to_dict() for h in self.history[-20:]],
                "stream_time": nxt,
                "scheduled": [h.to_dict() for h in self.history if nxt is not None and h.at is not None and h.at > nxt],
                "remove_at": self.remove_at, "encoder_id": self.encoder_id or None,
                "mv_scale": self.mv_scale, "mv_source": self.mv_source, "estimated_leads": self.estimated_leads,
                "artifacts": [a for a in self.artifacts if nxt is None or a["end"] > nxt]}

    def to_json(self) -> bytes:
        # the fields hold JSON values already: a shallow dict serialises the same record as
        # dataclasses.asdict, without its deep copy of the history (1.7 ms -> 0.25 ms a record,
        # on the path of every condition event)
        record = {f.name: getattr(self, f.name) for f in fields(self)}
        record["history"] = [h.to_dict() for h in self.history]
        return json.dumps({**record, **self._acked}).encode()

    def position(self) -> dict[str, Any]:
        """The stream position: what the per-segment record carries, and what a failed
        publication or a damaged record puts back with ``set_position``."""
        return {k: getattr(self, k) for k in POSITION_FIELDS}

    def set_position(self, position: dict[str, Any]) -> None:
        for k, v in position.items():
            if k in POSITION_FIELDS:
                setattr(self, k, v)

    def position_json(self) -> bytes:
        return dumps_spliced(self.position(), "tail_b64")

    def apply_position(self, raw: bytes) -> None:
        """Update from a stream-position record; a damaged one (ValueError) changes nothing."""
        d = json_value(raw)  # unreadable: a ValueError, skipped as damaged
        if not isinstance(d, dict):
            raise ValueError("a position record is a JSON object")
        before = self.position()
        self.set_position(d)
        try:
            self._check_position()
        except ValueError:
            self.set_position(before)
            raise
        self._acked = self.position()

    @staticmethod
    def from_json(raw: bytes) -> Patient:
        """A patient record as written by ``to_json``; ValueError for anything else, so that one
        damaged changelog record is skipped on restore instead of stopping a worker's start."""
        d = json_value(raw)  # unreadable: a ValueError, skipped as damaged
        if not isinstance(d, dict):
            raise ValueError("a patient record is a JSON object")
        # fields this version does not know come from a newer one (a rolling upgrade): the record
        # is still the patient's latest, so it is read without them rather than skipped
        p = Patient(**{k: v for k, v in d.items() if k in PATIENT_FIELDS})
        if not isinstance(p.history, list):
            raise ValueError("history must be a list")
        p.history = [Change.from_dict(h) for h in p.history]
        if not isinstance(p.artifacts, list) or not all(
                isinstance(a, dict) and isinstance(a.get("event_id"), str) and isinstance(a.get("seed"), int)
                and isinstance(a.get("start"), (int, float)) and isinstance(a.get("end"), (int, float))
                for a in p.artifacts):
            raise ValueError("artifacts must be a list of scheduled artifacts")
        base = np.asarray(p.base_vector, np.float32)
        if not isinstance(p.patient_id, str) or base.ndim != 1 or not np.isfinite(base).all():
            raise ValueError("patient_id must be a string and base_vector finite numbers")
        state_from_dict(p.state)  # EventError is a ValueError
        if p.mv_scale is not None and not (isinstance(p.mv_scale, list) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 100 for v in p.mv_scale)):
            raise ValueError("mv_scale must be a list of positive lead scales in mV")
        if not isinstance(p.estimated_leads, list) or not all(isinstance(v, str) for v in p.estimated_leads):
            raise ValueError("estimated_leads must be a list of lead names")
        if p.registered_statements is not None and not (isinstance(p.registered_statements, dict) and all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                for k, v in p.registered_statements.items())):
            raise ValueError("registered_statements must map statements to intensities")
        p._check_position()
        p._acked = p.position()
        return p

    def _check_position(self) -> None:
        if isinstance(self.next_seq, bool) or not isinstance(self.next_seq, int) or self.next_seq < 0:
            raise ValueError(f"next_seq must be a count, got {self.next_seq!r}")
        if self.stream_start is not None and not isinstance(self.stream_start, (int, float)):
            raise ValueError(f"stream_start must be epoch seconds, got {self.stream_start!r}")
        ss = self.segment_seconds
        if ss is not None and (isinstance(ss, bool) or not isinstance(ss, (int, float)) or not 0 < ss <= 3600):
            raise ValueError(f"segment_seconds must be a length in seconds, got {ss!r}")
        if self.tail_b64 is not None and not isinstance(self.tail_b64, str):
            raise ValueError("tail_b64 must be base64 text")
        if self.rhythm_state is not None and not isinstance(self.rhythm_state, dict):
            raise ValueError("rhythm_state must be an object")


PATIENT_FIELDS = frozenset(f.name for f in fields(Patient))
