import json

import numpy as np
import pytest

from models.conditions import CardiacState, encode_states
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
    (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
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
    (_ev(state={"statements": {"CLBBB": 1}, "contrast": 1}), "contrast must be true, false or absent"),
    (_ev(state={"statements": {"CLBBB": 1}, "contrast": "yes"}), "contrast must be true, false or absent"),
    (_ev(effective_time="soon"), "effective_time"),
    (_ev(transition_seconds=-1), "transition_seconds"),
    (_ev(type="register"), "reference"),
])
def test_invalid_events_say_why(raw, reason):
    with pytest.raises(EventError, match=reason):
        parse_event(raw)


def test_a_state_may_say_whether_it_is_drawn_with_contrastive_guidance():
    for contrast in (True, False):
        ev = Event("e9", "bed-2", "condition", CardiacState({"CLBBB": 1.0, "SR": 1.0}, 70, 60.0, contrast=contrast))
        back = parse_event(ev.to_json())
        assert back == ev and back.state.contrast is contrast
    plain = parse_event(_ev())
    assert plain.state.contrast is None and "contrast" not in json.loads(plain.to_json())["state"]
    with pytest.raises(ValueError, match="contrast"):
        CardiacState(contrast=1).validate()


def test_register_reference_kinds():
    for ref in ({"wfdb": "x/y"}, {"base_vector": [0.1] * 4}, {"samples": [[0] * 12] * 3}):
        ev = parse_event(_ev(type="register", reference=ref))
        assert ev.reference == ref
    with pytest.raises(EventError, match="exactly one"):
        parse_event(_ev(type="register", reference={"wfdb": "a", "base_vector": [1]}))


def test_any_mutation_parses_or_says_why():
    """Random damage to valid events (wrong types, NaN and infinities, huge and negative
    numbers, nesting, missing and extra fields, broken bytes) is either a valid event or an
    EventError with a reason, never another exception, which would stop the consumer."""
    import copy
    import math
    import random

    rng = random.Random(0)
    junk = [None, True, -1, 0, 1e308, -1e308, math.nan, math.inf, -math.inf, 2**70, "", "x" * 10_000,
            "ü\u0000", [], [1, "a"], {}, {"a": {"b": [None]}}, {"wfdb": None}, {"base_vector": ["a"]},
            {"samples": [[1, 2], [3]]}, {"samples": [[math.nan] * 12] * 3}, {"base_vector": []},
            {"statements": {"AFIB": math.nan}}, {"statements": []}, {"heart_rate": "fast"},
            {"heart_rate": math.nan}, {"statements": {"AFIB": 1}, "heart_rate": -5}]
    fields = ["schema_version", "event_id", "patient_id", "type", "state", "effective_time",
              "transition_seconds", "reference", "extra"]
    for trial in range(3000):
        body = json.loads(_ev(type=rng.choice(["condition", "register", "remove"]),
                              reference={"wfdb": "x/y"}))
        for _ in range(rng.randrange(1, 4)):
            f = rng.choice(fields)
            if rng.random() < 0.2:
                body.pop(f, None)
            elif f == "state" and isinstance(body.get("state"), dict) and rng.random() < 0.5:
                body["state"][rng.choice(["statements", "heart_rate", "age", "sex", "contrast"])] = copy.deepcopy(rng.choice(junk))
            else:
                body[f] = copy.deepcopy(rng.choice(junk))
        raw = json.dumps(body).encode()  # NaN and Infinity as Python writes them
        if rng.random() < 0.1:
            cut = rng.randrange(len(raw))
            raw = raw[:cut] + bytes([rng.randrange(256)]) + raw[cut + 1:]
        try:
            ev = parse_event(raw)
        except EventError as e:
            assert str(e), trial
            continue
        assert isinstance(ev, Event) and ev.event_id and ev.patient_id, trial
        if ev.state is not None:  # what the model is given is finite
            assert all(np.isfinite(a).all() for a in encode_states([ev.state])), (trial, ev.state)


def test_rhythms_ride_on_events_and_impossible_ones_are_refused_with_the_reason():
    from models.rhythm import Rhythm

    ev = parse_event(_ev(state=None, rhythm={"name": "vt", "rate": 180, "duration": 8}))
    assert ev.state is None and ev.rhythm == Rhythm("vt", rate=180, duration=8).validated()
    assert parse_event(ev.to_json()) == ev
    for rhythm, reason in [({"name": "vt", "rate": 400}, "100-250"), ({"name": "torsade"}, "unknown rhythm"),
                           ({"name": "pvc", "pattern": "quadrigeminy"}, "pattern must be one of"),
                           ({"name": "vf", "rate": 60}, "takes no rate"), ("vt", "an object"),
                           ({"name": "aflutter", "rate": 150, "ratio": 4}, "flutter runs at 240-350")]:
        with pytest.raises(EventError, match=reason):
            parse_event(_ev(rhythm=rhythm))
    with pytest.raises(EventError, match="needs a state, a rhythm or both"):
        parse_event(_ev(state=None))
    with pytest.raises(EventError, match="remove event takes no rhythm"):
        parse_event(_ev(type="remove", state=None, rhythm={"name": "vf"}))


def test_the_shipped_scenarios_parse_and_the_alarms_name_the_five_rhythms():
    from pathlib import Path

    from twin_engine.ops.scenario import load_scenario

    folder = Path(__file__).resolve().parents[2] / "twin_engine" / "ops" / "scenarios"
    scenarios = {p.stem: load_scenario(p) for p in folder.glob("*.toml")}
    assert {"ward", "alarms"} <= set(scenarios)
    named = {c.event.rhythm.name for c in scenarios["alarms"].changes}
    assert named == {"asystole", "sinus_brady", "svt", "vt", "vf"}


def test_artifact_events_round_trip_and_bad_ones_say_why():
    base = {"schema_version": 1, "event_id": "a-1", "patient_id": "bed-1", "type": "artifact"}
    ok = parse_event(json.dumps({**base, "effective_time": 1e9, "artifact": {"kind": "ma", "snr": 6, "duration": 20,
                                                                             "leads": ["II"]}}))
    assert ok.artifact == {"kind": "ma", "snr": 6, "duration": 20, "leads": ["II"]} and ok.effective_time == 1e9
    assert parse_event(ok.to_json()) == ok
    for body, reason in [({}, "needs an artifact"),
                         ({"type": "condition", "state": {"heart_rate": 80}, "artifact": {"kind": "ma"}},
                          "only an artifact event"),
                         ({"artifact": {"kind": "ma", "snr": 6, "duration": 2}, "state": {"heart_rate": 80}},
                          "takes no state"),
                         ({"artifact": {"kind": "ma", "snr": 6, "duration": 601}}, "at most 600"),
                         ({"artifact": {"kind": "ma", "snr": 6, "duration": 2, "at": 3}}, "takes no at"),
                         ({"artifact": {"kind": "lead_off", "duration": 2, "leads": ["Q7"]}}, "leads must be"),
                         ({"artifact": ["ma"]}, "must be an object")]:
        with pytest.raises(EventError, match=reason):
            parse_event(json.dumps({**base, **body}))
