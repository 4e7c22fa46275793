"""The registry's records without a broker: typed history, and the changelog codec that a
worker's restore and the monitor share."""

from __future__ import annotations

import json

import pytest

from models.conditions import CardiacState
from stream.events import state_to_dict
from twin_engine.registry import Change, Patient, apply_record, position_key


def _patient(seq: int = 0) -> Patient:
    p = Patient("bed-1", [0.5] * 4, "m", state_to_dict(CardiacState({"SR": 1.0}, 60)), next_seq=seq,
                stream_start=1000.0, segment_seconds=2.0)
    p.set_state(CardiacState({"AFIB": 1.0}, 110), "af", seq, 5.0, at=1010.0, transition=4.0)
    return p


def test_history_round_trips_typed_and_refuses_damaged_entries():
    p = _patient()
    q = Patient.from_json(p.to_json())
    assert q.history == p.history and isinstance(q.history[0], Change)
    assert q.history[0].at == 1010.0 and q.history[0].transition == 4.0 and q.history[0].holds_from == 1010.0
    assert Change("reg", {}, 0, 0.0).holds_from == float("-inf")
    assert "at" not in Change("reg", {}, 0, 0.0).to_dict()  # the record's form is unchanged
    record = json.loads(p.to_json())
    for bad in ([{"state": {}}], [{"event_id": "x", "state": {}, "at": "soon"}], "not a list"):
        with pytest.raises(ValueError):
            Patient.from_json(json.dumps({**record, "history": bad}).encode())


def test_artifacts_round_trip_are_forgotten_once_over_and_damaged_ones_refused():
    p = _patient()
    p.add_artifact({"kind": "ma", "start": 1010.0, "end": 1020.0, "leads": [1], "snr_db": 6.0, "event_id": "a",
                    "seed": 7}, now=1000.0)
    q = Patient.from_json(p.to_json())
    assert q.artifacts == p.artifacts and q.artifacts_after(1000.0) == 1 and q.artifacts_after(1020.0) == 0
    q.add_artifact({"kind": "lead_off", "start": 1030.0, "end": 1031.0, "leads": None, "snr_db": None,
                    "event_id": "b", "seed": 8, "level": "flat"}, now=1025.0)
    assert [a["event_id"] for a in q.artifacts] == ["b"]  # the one over by then is forgotten
    assert q.view(2.0)["artifacts"] == q.artifacts
    record = json.loads(p.to_json())
    for bad in ("x", [{"kind": "ma"}], [{"event_id": "a", "seed": "7", "start": 1, "end": 2}]):
        with pytest.raises(ValueError):
            Patient.from_json(json.dumps({**record, "artifacts": bad}).encode())


def test_changelog_replay_positions_tombstones_and_the_newer_position():
    table: dict[str, Patient | None] = {}
    p = _patient()
    apply_record(table, b"bed-1", p.to_json())
    p.next_seq = 7
    apply_record(table, position_key("bed-1"), p.position_json())
    assert table["bed-1"].next_seq == 7
    # a state change written while segment 7 was in flight carries the position before it, and
    # may land after position 7: the newer acknowledged position stays
    stale = _patient(seq=6)
    assert apply_record(table, b"bed-1", stale.to_json()).removed is False
    assert table["bed-1"].next_seq == 7 and json.loads(table["bed-1"].to_json())["next_seq"] == 7
    gone = apply_record(table, b"bed-1", None)
    assert gone.removed and gone.patient_id == "bed-1" and table["bed-1"] is None
    apply_record(table, position_key("bed-1"), p.position_json())  # a position of a removed patient: ignored
    assert table["bed-1"] is None
    with pytest.raises(ValueError):
        apply_record(table, None, b"{}")
    with pytest.raises(ValueError):
        apply_record(table, b"bed-2", b"not json")
