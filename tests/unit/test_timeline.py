"""The timeline alone: which state each segment is in, without a stream, a task or a loop."""

from __future__ import annotations

from models.conditions import CardiacState
from twin_engine.registry import Change
from twin_engine.worker.timeline import StateChange, Timeline

NORMAL = (CardiacState({"SR": 1.0}, 60), "reg")


def _timeline(origin: float = 1000.0, seconds: float = 2.0) -> Timeline:
    return Timeline(NORMAL, lambda seq: origin + seq * seconds, seconds)


def test_changes_hold_from_their_time_in_time_order_and_ramp():
    t = _timeline()
    later = t.schedule(StateChange(CardiacState({"AFIB": 1.0}, 120), "later", 1020.0, 0.0, 0.0), next_seq=3)
    now = t.schedule(StateChange(CardiacState({"SR": 1.0}, 100), "now", None, 4.0, 0.0), next_seq=3)
    assert (later, now) == (1020.0, 1006.0)  # "now" is the next segment not yet published
    states = [t.state_and_event(seq) for seq in range(12)]
    assert [e for _, e in states] == ["reg"] * 3 + ["now"] * 7 + ["later"] * 2
    # a 4 s ramp over 2 s segments: two steps from 60 to 100, then 100 until the change at 1020 s
    assert [round(s.heart_rate) for s, _ in states[2:7]] == [60, 80, 100, 100, 100]
    assert states[10][0].heart_rate == 120


def test_a_change_never_lands_before_the_next_unpublished_segment():
    t = _timeline()
    at = t.schedule(StateChange(CardiacState({"SR": 1.0}, 90), "past", 900.0, 0.0, 0.0), next_seq=5)
    assert at == 1010.0 and t.seq_at(at) == 5 and t.state_and_event(4)[1] == "reg"


def test_settle_keeps_only_what_is_still_to_come():
    t = _timeline()
    t.schedule(StateChange(CardiacState({"SR": 1.0}, 90), "a", 1004.0, 0.0, 0.0), next_seq=0)
    t.schedule(StateChange(CardiacState({"SR": 1.0}, 70), "b", 1010.0, 0.0, 0.0), next_seq=0)
    t.settle(next_seq=3)
    assert [c.event_id for c in t.changes] == ["b"] and t.settled[1] == "a"
    t.settle(next_seq=6)
    assert t.changes == [] and t.settled[1] == "b" and t.state_and_event(9)[1] == "b"


def test_restore_from_history_keeps_the_changes_ahead():
    history = [{"event_id": "reg", "state": {"statements": {"SR": 1.0}, "heart_rate": 60, "sex": 0}},
               {"event_id": "x", "state": {"statements": {"AFIB": 1.0}, "heart_rate": 110, "sex": 0}, "at": 1004.0},
               {"event_id": "y", "state": {"statements": {"SR": 1.0}, "heart_rate": 80, "sex": 0}, "at": 1030.0}]
    t = _timeline()
    t.restore([Change.from_dict(h) for h in history], next_seq=5)
    assert t.settled[1] == "x" and [c.event_id for c in t.changes] == ["y"]
    assert t.state_and_event(14)[1] == "x" and t.state_and_event(15)[1] == "y"
