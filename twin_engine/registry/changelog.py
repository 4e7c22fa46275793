"""The registry changelog's records, read the same way by a worker's restore and by the monitor.

Two kinds of record share the compacted topic and the patient's partition: the patient (key: its
id; written on registration and on every state change; a tombstone removes it) and its stream
position (key: id + ``#position``; written for every published segment). Replayed in offset
order, a position updates the patient written before it.
"""

from __future__ import annotations

from dataclasses import dataclass

from twin_engine.registry.patient import Patient

POSITION_SUFFIX = "#position"  # '#' is not allowed in patient ids (stream.events)


def position_key(patient_id: str) -> bytes:
    """The key of the patient's stream-position records."""
    return (patient_id + POSITION_SUFFIX).encode()


@dataclass(frozen=True)
class Applied:
    """What one record did: to which patient, and whether it removed it."""

    patient_id: str
    removed: bool = False


def apply_record(table: dict[str, Patient | None], key: bytes | None, value: bytes | None) -> Applied:
    """Apply one changelog record to ``table`` (patient id -> patient, None once removed).

    A patient record read after a later stream position keeps that position: both were
    acknowledged, and a state change written while a segment was in flight carries the one
    before it (restarting there would send that segment twice).

    Returns:
        the patient it concerned.
    Raises:
        ValueError: a record without a key, or one that cannot be read (skip it: one damaged
            record must not stop a restore).
    """
    if key is None:
        raise ValueError("record without a key")
    name = key.decode(errors="replace")
    if name.endswith(POSITION_SUFFIX):
        pid = name[:-len(POSITION_SUFFIX)]
        p = table.get(pid)
        if p is not None and value is not None:
            p.apply_position(value)
        return Applied(pid)
    if value is None:
        table[name] = None
        return Applied(name, removed=True)
    p = Patient.from_json(value)
    old = table.get(name)
    if old is not None and old.next_seq > p.next_seq:
        p.set_position(old.position())
        p.acknowledge(p.position())
    table[name] = p
    return Applied(name)
