"""``twin-engine play``: a scenario file, a ward and its timeline, sent to a running service.

A scenario is TOML: the patients to onboard, the state changes, each at a time in seconds of
that patient's stream (from its first segment in the scenario's state), optionally with a
heart-rate ramp or a named rhythm (``rhythm = { name = "vt", rate = 180, duration = 8 }``), and
removals (``[[remove]]``: the patient's stream ends before the first segment
at or after its time). See ``twin_engine/ops/scenarios/ward.toml``. ``[[artifact]]`` entries
(noise and artifacts over an interval, ``models.stress.artifacts``) are drawn by ``twin-engine
render`` and ``twin-engine stress``, and ``play`` sends them as artifact events. A top-level
``seconds`` sets how long ``render`` draws each record, and ``fs`` the rate it writes them at (the
model's by default; higher for pacing pulses, ``models.rhythm.pacing``). A patient's ``t_wave``
(mV, 0.1-3) draws its normal beats with a T wave that tall in lead II (IEC 60601-2-27's tall
T-wave rejection test), in ``render`` and ``stress`` only. A patient's reference is a ``wfdb``
record (``wfdb_start`` and ``wfdb_seconds`` pick a stretch of a long one: a minute of a MIT-BIH
record, whose two leads give the other ten estimated, ``models.leads``) or a ``base_vector``.

The player registers the patients, waits for each one's first segment to learn where its stream
starts, then sends every change at once with its ``effective_time``: the service makes each at
the first segment at or after its time (event time), at any speed, and the annotations topic
records when each began. So a stress test replays the same timeline, segment for segment, on
any machine. Every event goes through the events topic like any producer's, validated by the
same schema.
"""

from __future__ import annotations

import asyncio
import base64
import json
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from models.conditions import VOCAB
from models.data.ptbxl import LEADS
from models.rhythm.pacing import MAX_FS
from models.stress.artifacts import Artifact, ArtifactError, artifact
from stream.events import Event, EventError, json_value, new_event_id, parse_event
from stream.kafka.producer import send_events
from twin_engine.config import Settings


class ScenarioError(ValueError):
    """The scenario cannot be played; the message names the entry."""


@dataclass
class Change:
    at: float  # seconds of the patient's stream
    event: Event  # its effective_time is set once the stream's start is known


@dataclass
class Scenario:
    registrations: list[Event]
    changes: list[Change]  # the timeline: state changes and removals, in time order
    artifacts: dict[str, list[Artifact]] = field(default_factory=dict)  # per patient, in file order
    seconds: float | None = None  # how long render draws each record
    fs: int | None = None  # the rate render writes them at (None: the model's)
    t_waves: dict[str, float] = field(default_factory=dict)  # per patient, its lead-II T wave in mV


def _event(d: dict[str, Any], vocab: tuple[str, ...], where: str) -> Event:
    try:
        return parse_event(json.dumps({"schema_version": 1, "event_id": new_event_id(), **d}), vocab)
    except (EventError, TypeError, ValueError) as exc:
        raise ScenarioError(f"{where}: {exc}") from None


def load_scenario(path: str | Path, vocab: tuple[str, ...] = VOCAB) -> Scenario:
    """Parse and validate the whole file before anything is sent."""
    try:
        doc = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    unknown = set(doc) - {"patient", "change", "remove", "artifact", "seconds", "fs", "title"}
    if unknown:
        raise ScenarioError(f"{path}: unknown sections {sorted(unknown)} "
                            "(known: patient, change, remove, artifact, seconds, fs, title)")
    fs = doc.get("fs")
    if fs is not None and (isinstance(fs, bool) or not isinstance(fs, int) or not 250 <= fs <= MAX_FS):
        raise ScenarioError(f"{path}: fs must be a whole number of Hz, 250..{MAX_FS}")
    seconds = doc.get("seconds")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                or not 1 <= seconds <= 86400):
        raise ScenarioError(f"{path}: seconds must be 1..86400")
    regs, t_waves = [], {}
    for i, p in enumerate(doc.get("patient", [])):
        where = f"patient {i + 1} ({p.get('id', '?')})"
        ref = {k: p[k] for k in ("wfdb", "base_vector") if k in p}
        if len(ref) != 1:
            raise ScenarioError(f"{where}: give one reference, wfdb or base_vector")
        stretch = {k: p[f"wfdb_{k}"] for k in ("start", "seconds") if f"wfdb_{k}" in p}
        if stretch and "wfdb" not in ref:
            raise ScenarioError(f"{where}: wfdb_start and wfdb_seconds pick a stretch of a wfdb reference")
        ref.update(stretch)  # the service checks them with the record in hand
        if "t_wave" in p:
            tw = p["t_wave"]
            if isinstance(tw, bool) or not isinstance(tw, (int, float)) or not 0.1 <= tw <= 3.0:
                raise ScenarioError(f"{where}: t_wave must be a lead-II T-wave height of 0.1-3 mV")
            t_waves[p.get("id")] = float(tw)
        regs.append(_event({"patient_id": p.get("id"), "type": "register", "reference": ref,
                            **{k: p[k] for k in ("state", "rhythm") if k in p}}, vocab, where))
    ids = [e.patient_id for e in regs]
    if not ids or len(set(ids)) != len(ids):
        raise ScenarioError(f"{path}: patients must be listed, each id once")
    changes, removed = [], set()
    for kind in ("change", "remove"):
        for i, c in enumerate(doc.get(kind, [])):
            where = f"{kind} {i + 1} (at {c.get('at', '?')} s, {c.get('patient', '?')})"
            at = c.get("at")
            if isinstance(at, bool) or not isinstance(at, (int, float)) or at < 0:
                raise ScenarioError(f"{where}: at must be seconds >= 0")
            if c.get("patient") not in ids:
                raise ScenarioError(f"{where}: patient must be one of the scenario's {ids}")
            if kind == "remove":
                if c["patient"] in removed:
                    raise ScenarioError(f"{where}: a patient is removed once")
                removed.add(c["patient"])
                fields = {"type": "remove"}
            else:
                fields = {"type": "condition", "transition_seconds": c.get("transition", 0),
                          **{k: c[k] for k in ("state", "rhythm") if k in c}}
            changes.append(Change(float(at), _event({"patient_id": c["patient"], **fields}, vocab, where)))
    artifacts: dict[str, list[Artifact]] = {}
    for i, a in enumerate(doc.get("artifact", [])):
        where = f"artifact {i + 1} (at {a.get('at', '?')} s, {a.get('patient', '?')})"
        if not isinstance(a, dict) or a.get("patient") not in ids:
            raise ScenarioError(f"{where}: patient must be one of the scenario's {ids}")
        try:
            artifacts.setdefault(a["patient"], []).append(
                artifact({k: v for k, v in a.items() if k != "patient"}, LEADS, where))
        except ArtifactError as exc:
            raise ScenarioError(str(exc)) from None
        asked = {k: v for k, v in a.items() if k not in ("patient", "at")}
        changes.append(Change(float(a["at"]), _event({"patient_id": a["patient"], "type": "artifact",
                                                      "artifact": asked}, vocab, where)))
    return Scenario(regs, sorted(changes, key=lambda c: c.at), artifacts,
                    None if seconds is None else float(seconds), fs, t_waves)



async def play(settings: Settings, scenario: Scenario, timeout: float = 120.0) -> dict[str, float]:
    """Onboard the scenario's patients, then schedule its changes; returns each patient's stream
    start (the start time of its first segment in the scenario's state).

    Raises:
        ScenarioError: the service is not there, or refused a registration, or the scenario asks
            for what only ``render`` draws (a tall T wave).
    """
    if scenario.t_waves:
        raise ScenarioError(f"t_wave ({', '.join(scenario.t_waves)}) is drawn by render and stress only, "
                            "not by a running service")
    kw = settings.kafka.client_kwargs()
    k = settings.kafka
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **k.consumer_kwargs())
    producer = AIOKafkaProducer(acks="all", **kw)
    await consumer.start()
    await producer.start()
    try:
        # the first segments tell where each stream starts; a dead letter, why one never will
        await consumer.topics()  # the metadata of every topic
        tps = [TopicPartition(t, p) for t in (k.topic_segments, k.topic_dead_letter)
               for p in sorted(consumer.partitions_for_topic(t) or ())]
        if not any(tp.topic == k.topic_segments for tp in tps):
            raise ScenarioError(f"no topic {k.topic_segments}: is the service running on {kw['bootstrap_servers']}?")
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:  # the end is fixed now: nothing published after it is missed
            await consumer.position(tp)
        await send_events(producer, k.topic_events, scenario.registrations)
        waiting = {e.event_id: e.patient_id for e in scenario.registrations}
        start: dict[str, float] = {}
        try:
            async with asyncio.timeout(timeout):
                while waiting:
                    for tp, msgs in (await consumer.getmany(timeout_ms=500)).items():
                        for m in msgs:
                            _first_segment(m.value, tp.topic == k.topic_dead_letter, waiting, start)
        except TimeoutError:
            raise ScenarioError(f"no first segment within {timeout:g} s for {sorted(waiting.values())}: "
                                "is a worker consuming the events topic?") from None
        for c in scenario.changes:
            c.event = replace(c.event, effective_time=start[c.event.patient_id] + c.at)
        await send_events(producer, settings.kafka.topic_events, [c.event for c in scenario.changes])
        return start
    finally:
        await producer.stop()
        await consumer.stop()


def _first_segment(value: bytes | None, dead_letter: bool, waiting: dict[str, str], start: dict[str, float]) -> None:
    """Note a registration's first segment (its start time), or fail on its dead letter."""
    try:
        d = json.loads(value or b"")
        if dead_letter:
            event_id = json_value(base64.b64decode(d["original_b64"])).get("event_id")
            if event_id in waiting:
                raise ScenarioError(f"{waiting[event_id]}: the service refused its registration: {d['reason']}")
        elif d.get("event_id") in waiting:
            start[waiting.pop(d["event_id"])] = float(d["start_time"])
    except ScenarioError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError):
        return  # another producer's record (a dead letter's original may be any bytes)
