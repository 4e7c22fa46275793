import json

import pytest

from models.conditions import CardiacState
from stream.events import Event, EventError, parse_event


def _ev(**kw):
    body = {"schema_version": 1, "event_id": "e1", "patient_id": "bed-1", "type": "condition",
            "state": {"statements": {"AFIB": 1.0}, "heart_rate": 120}}
    body.update(kw)
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


def test_round_trip():
    ev = Event("e9", "bed-2", "condition", CardiacState({"PVC": 0.5, "SR": 1.0}, 80, 61.0, 1), 123.0, 30.0)
    back = parse_event(ev.to_json())
    assert back == ev


@pytest.mark.parametrize("raw, reason", [
    (b"\x00\xff", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (_ev(schema_version=2), "schema_version"),
    (_ev(event_id=""), "event_id"),
    (_ev(patient_id="bed 1/../x"), "patient_id"),
    (_ev(type="explode"), "type"),
    (_ev(state=None), "needs a state"),
    (_ev(state={"statements": {"AFIB": 2}}), "intensity"),
    (_ev(state={"statements": {"XYZ": 1}}), "unknown statement"),
    (_ev(state={"heart_rate": 900}), "heart_rate"),
    (_ev(state={"mood": "sad"}), "unknown state fields"),
    (_ev(effective_time="soon"), "effective_time"),
    (_ev(transition_seconds=-1), "transition_seconds"),
    (_ev(type="register"), "reference"),
])
def test_invalid_events_say_why(raw, reason):
    with pytest.raises(EventError, match=reason):
        parse_event(raw)


def test_register_reference_kinds():
    for ref in ({"wfdb": "x/y"}, {"base_vector": [0.1] * 4}, {"samples": [[0] * 12] * 3}):
        ev = parse_event(_ev(type="register", reference=ref))
        assert ev.reference == ref
    with pytest.raises(EventError, match="exactly one"):
        parse_event(_ev(type="register", reference={"wfdb": "a", "base_vector": [1]}))
