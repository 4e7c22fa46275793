"""Patients and their changelog: ``patient`` (the record, its typed history and position),
``changelog`` (how the compacted topic's records read), ``store`` (the worker's write-through
registry and its restore)."""

from twin_engine.registry.changelog import POSITION_SUFFIX, apply_record, position_key
from twin_engine.registry.patient import (
           HISTORY_LIMIT,
           SCHEDULED_LIMIT,
           SEEN_EVENTS_LIMIT,
           Change,
           Patient,
)
from twin_engine.registry.store import STALL_S, BrokerStateLost, Registry, partition_of

__all__ = ["HISTORY_LIMIT", "POSITION_SUFFIX", "SCHEDULED_LIMIT", "SEEN_EVENTS_LIMIT", "STALL_S", "BrokerStateLost",
           "Change", "Patient", "Registry", "apply_record", "partition_of", "position_key"]
