"""Scenarios (`twin-engine play`): the file is validated whole before anything is sent, and a
played timeline lands on each patient's stream at its times, ramps included."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from stream.segments import decode_segment
from tests.support import RECORDS, read_all, start_with_dashboard, wait_for
from twin_engine.ops.scenario import ScenarioError, load_scenario, play

EXAMPLE = Path(__file__).resolve().parents[2] / "twin_engine" / "ops" / "scenarios" / "ward.toml"


def test_the_example_loads_and_bad_files_say_which_entry(tmp_path):
    ward = load_scenario(EXAMPLE)
    assert [e.patient_id for e in ward.registrations] == ["bed-01", "bed-02", "bed-03"]
    assert [c.at for c in ward.changes] == sorted(c.at for c in ward.changes)  # in time order
    head = '[[patient]]\nid = "b1"\nwfdb = "x"\n'
    bad = {
        head + '[[change]]\nat = 5\npatient = "b1"\nstate = { statements = { NOPE = 1 } }\n': "change 1 (at 5 s, b1)",
        head + '[[change]]\nat = 5\npatient = "b9"\nstate = { heart_rate = 90 }\n': "one of the scenario's",
        head + '[[change]]\nat = -1\npatient = "b1"\nstate = { heart_rate = 90 }\n': "at must be seconds",
        '[[patient]]\nid = "b1"\n': "patient 1 (b1): give one reference",
        '[[patient]]\nid = "b1"\nbase_vector = [1.0]\nwfdb_seconds = 60\n': "pick a stretch of a wfdb reference",
        '[[patient]]\nid = "bad id!"\nwfdb = "x"\n': "patient 1 (bad id!)",
        head + head: "each id once",
        head + '[[event]]\nat = 1\n': "unknown sections",
        head + '[[remove]]\nat = 5\npatient = "b9"\n': "remove 1 (at 5 s, b9): patient must be one of",
        head + '[[remove]]\nat = 5\npatient = "b1"\n[[remove]]\nat = 6\npatient = "b1"\n': "removed once",
        "[[patient]\n": "ward.toml",
    }
    for text, says in bad.items():
        (tmp_path / "ward.toml").write_text(text)
        with pytest.raises(ScenarioError) as err:
            load_scenario(tmp_path / "ward.toml")
        assert says in str(err.value), (text, str(err.value))


async def test_a_played_timeline_lands_at_its_times(broker, tiny_model_dir, data_dir, tmp_path):
    svc, hub, runner, settings = await start_with_dashboard(broker, tiny_model_dir, data_dir, speed=2.0, patients=0)
    (tmp_path / "s.toml").write_text(f"""
[[patient]]
id = "s-1"
wfdb = "{RECORDS[0]}"
state = {{ statements = {{ SR = 1 }}, heart_rate = 60 }}
[[patient]]
id = "s-2"
wfdb = "{RECORDS[1]}"
[[change]]
at = 9.5
patient = "s-1"
state = {{ statements = {{ AFIB = 1 }}, heart_rate = 120 }}
[[change]]
at = 6
patient = "s-1"
state = {{ statements = {{ SR = 1 }}, heart_rate = 90 }}
transition = 3
[[change]]
at = 7
patient = "s-2"
state = {{ statements = {{ SR = 1, PVC = 1 }}, heart_rate = 75 }}
[[remove]]
at = 8.5
patient = "s-2"
""")
    scenario = load_scenario(tmp_path / "s.toml")
    try:
        start = await play(settings, scenario, timeout=60)
        assert sorted(start) == ["s-1", "s-2"]
        await wait_for(lambda: svc.streams["s-1"].p.next_seq >= 12 and "s-2" not in svc.streams, timeout=60)
    finally:
        await runner.cleanup()
        await hub.close()
        await svc.stop()
    seconds = settings.segment_seconds
    opened: dict[str, dict] = {}  # each event's first interval (a heart-rate ramp opens one per step)
    for m in await read_all(broker.bootstrap_servers, settings.kafka.topic_annotations):
        opened.setdefault(json.loads(m.value)["event_id"], json.loads(m.value))
    for c in scenario.changes:  # each from the first segment at or after its time
        if c.event.type == "remove":
            continue
        pid = c.event.patient_id
        want = start[pid] + math.ceil(c.at / seconds - 1e-9) * seconds
        assert opened[c.event.event_id]["start_time"] == pytest.approx(want, abs=1e-3), (pid, c.at)
    segs = sorted((decode_segment(m.value) for m in await read_all(broker.bootstrap_servers, settings.kafka.topic_segments)
                   if m.key == b"s-1"), key=lambda s: s.seq)
    hrs = [round(s.state["heart_rate"]) for s in segs if s.start_time >= start["s-1"] - 1e-6][:11]
    assert hrs == [60] * 6 + [70, 80, 90, 90, 120]  # the ramp over 3 s, then AFIB at 9.5 -> 10 s
    # s-2 is removed at 8.5 s: its last segment is the one starting before then, in PVC since 7 s
    segs2 = sorted((decode_segment(m.value) for m in await read_all(broker.bootstrap_servers,
                    settings.kafka.topic_segments) if m.key == b"s-2"), key=lambda s: s.seq)
    assert segs2[-1].start_time == pytest.approx(start["s-2"] + (math.ceil(8.5 / seconds) - 1) * seconds, abs=1e-3)
    assert segs2[-1].state["statements"] == {"SR": 1.0, "PVC": 1.0}


def test_waiting_for_registrations_reads_past_other_producers_dead_letters():
    """While `play` waits for its registrations it reads the dead-letter topic, whose originals
    may be any bytes: only a refusal of one of its own registrations stops it."""
    import base64

    from twin_engine.ops.scenario import _first_segment

    def dead(original: bytes, reason: str = "bad") -> bytes:
        return json.dumps({"reason": reason, "original_b64": base64.b64encode(original).decode()}).encode()

    waiting, start = {"reg-1": "bed-1"}, {}
    for original in (b"[" * 200_000 + b"]" * 200_000, b"\xff", b"[1]", json.dumps({"event_id": "other"}).encode()):
        _first_segment(dead(original), True, waiting, start)
    with pytest.raises(ScenarioError, match="bed-1: the service refused its registration: nope"):
        _first_segment(dead(json.dumps({"event_id": "reg-1"}).encode(), "nope"), True, waiting, start)
