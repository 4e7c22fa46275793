"""The CLI's Kafka clients: ``register``, ``send`` and ``tail`` speak to a running service only
through its topics, like any other producer or monitor would."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from models.conditions import CardiacState, ConditionError
from models.rpeaks import heart_rate
from stream.events import Event, new_event_id
from stream.kafka.embedded import EMBEDDED_PORT
from stream.segments import decode_segment
from twin_engine.config import Settings


def with_default_broker(settings: Settings) -> Settings:
    """The configured Kafka, or the embedded broker's default port (where `serve` and `demo`
    start it): the clients look for a running service, they start none."""
    settings.kafka.bootstrap_servers = settings.kafka.bootstrap_servers or f"127.0.0.1:{EMBEDDED_PORT}"
    return settings


def _kwargs(settings: Settings) -> dict:
    return with_default_broker(settings).kafka.client_kwargs()


def parse_statements(items: list[str]) -> dict[str, float]:
    """``AFIB`` or ``AFIB=0.8`` -> {"AFIB": 0.8}."""
    out = {}
    for item in items:
        code, _, value = item.partition("=")
        try:
            out[code] = float(value) if value else 1.0
        except ValueError:
            raise ConditionError(f"{item}: the intensity after '=' must be a number in [0, 1]") from None
    return out


async def send_event(settings: Settings, event: Event) -> None:
    prod = AIOKafkaProducer(**_kwargs(settings))
    await prod.start()
    try:
        await prod.send_and_wait(settings.kafka.topic_events, event.to_json(), key=event.patient_id.encode())
    finally:
        await prod.stop()


def send(settings: Settings, patient_id: str, statements: list[str], hr: float,
         effective_time: float | None = None, transition: float = 0.0, contrast: bool | None = None) -> Event:
    state = CardiacState(parse_statements(statements), hr, contrast=contrast).validate()
    ev = Event(new_event_id(), patient_id, "condition", state, effective_time, transition)
    asyncio.run(send_event(settings, ev))
    return ev


def register(settings: Settings, patient_id: str, wfdb: list[str], statements: list[str], hr: float,
             start: float | None = None, seconds: float | None = None) -> Event:
    state = CardiacState(parse_statements(statements) or {"NORM": 1.0, "SR": 1.0}, hr).validate()
    wfdb = [_record_path(settings, w) for w in wfdb]
    stretch = {k: v for k, v in (("start", start), ("seconds", seconds)) if v is not None}
    ev = Event(new_event_id(), patient_id, "register", state,
               reference={"wfdb": wfdb if len(wfdb) > 1 else wfdb[0], **stretch})
    asyncio.run(send_event(settings, ev))
    return ev


def _record_path(settings: Settings, path: str) -> str:
    """A record named from here (``../shared/data/ludb/1``) as the service reads it: relative to
    its ``data_dir`` when it lies there; anything else is sent as given (the service judges it)."""
    local = Path(path).expanduser()
    if not Path(f"{local}.hea").is_file():
        return path
    root, here = Path(settings.data_dir).resolve(), local.resolve()
    if here.is_relative_to(root):
        return str(here.relative_to(root))
    print(f"note: {path} lies outside the data directory {root}; a service reading from there will "
          "refuse it (see `tail --dead-letters`)", file=sys.stderr)
    return path


def segment_line(raw: bytes) -> str:
    """A segment as one console line (ValueError, KeyError or TypeError for other records)."""
    seg = decode_segment(raw)
    hr = heart_rate(seg.samples, seg.fs)
    st = "+".join(seg.state.get("statements", {})) or "-"
    return (f"{seg.patient_id} seq={seg.seq} t={time.strftime('%H:%M:%S', time.localtime(seg.start_time))} "
            f"n={len(seg.samples)} hr_measured={hr:.0f} target={seg.state['heart_rate']:.0f} state={st} "
            f"event={seg.event_id}")


def dead_letter_line(raw: bytes) -> str:
    """A dead-letter record as one line: where the event was, why it was refused, its bytes."""
    d = json.loads(raw)
    original = base64.b64decode(d["original_b64"]).decode(errors="replace")
    return f"{d['topic']}[{d['partition']}]@{d['offset']} {d['reason']} | {original[:300]}"


async def tail(settings: Settings, patient_id: str | None, limit: int = 0, from_beginning: bool = False,
               dead_letters: bool = False) -> int:
    """Print one line per segment (seq, start time, measured HR, state), or per dead-lettered
    event with its reason."""
    topic, line = ((settings.kafka.topic_dead_letter, dead_letter_line) if dead_letters
                   else (settings.kafka.topic_segments, segment_line))
    cons = AIOKafkaConsumer(topic, auto_offset_reset="earliest" if from_beginning else "latest",
                            enable_auto_commit=False, fetch_max_wait_ms=settings.kafka.fetch_max_wait_ms,
                            **_kwargs(settings))
    await cons.start()
    n = 0
    try:
        async for msg in cons:
            if patient_id and msg.key and msg.key.decode(errors="replace") != patient_id:
                continue
            try:
                text = line(msg.value)
            except (ValueError, KeyError, TypeError) as exc:  # not the record expected: say so, keep following
                print(f"skipped record {msg.partition}@{msg.offset}: unreadable ({exc.__class__.__name__}: {exc})",
                      file=sys.stderr, flush=True)
                continue
            print(text, flush=True)
            n += 1
            if limit and n >= limit:
                break
    finally:
        await cons.stop()
    return n


def dump(obj) -> str:
    return json.dumps(obj, indent=2, default=str)
