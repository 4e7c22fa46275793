"""Crash points: named places where a crash-consistency test kills the worker (SIGKILL, no
clean-up), like a power cut between two writes. Off unless ``TWIN_CRASH_AT=name:n`` is set in
the worker's environment (the n-th time the point is reached; a variable outside the
``TWIN_ENGINE_`` configuration on purpose: no configuration file can switch it on).

Points: ``segment-sent`` (a segment handed to the producer, not yet acknowledged),
``segment-acked`` (acknowledged, its stream position not yet written), ``events-durable``
(a batch's registry writes acknowledged, its offsets not yet committed).
"""

from __future__ import annotations

import os
import signal

POINTS = ("segment-sent", "segment-acked", "events-durable")


def _parse(spec: str) -> tuple[str, int] | None:
    name, _, count = spec.partition(":")
    if name not in POINTS:
        return None
    return name, max(1, int(count)) if count.isdigit() else 1


_ARMED = _parse(os.environ.get("TWIN_CRASH_AT", ""))
_hits = 0


def crash_point(name: str) -> None:
    """Kill this process here if the armed point is ``name`` and its count is reached."""
    global _hits
    if _ARMED is None or _ARMED[0] != name:
        return
    _hits += 1
    if _hits >= _ARMED[1]:
        os.kill(os.getpid(), signal.SIGKILL)
