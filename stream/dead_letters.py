"""Dead-letter records: an event the service refused, with the reason.

The record carries the original (base64) only up to ``ORIGINAL_LIMIT`` bytes, with its full size
and SHA-256: an original near the events topic's 1 MB limit grew past the producer's limit
once base64-encoded (1,064,467 bytes for a 546 kB registration), the dead letter could not be
sent, and its partition retried it forever. The event and patient ids are copied out when the
original names them, so a client can match a truncated original to what it sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any

ORIGINAL_LIMIT = 64 * 1024  # bytes of the original kept; a dead letter stays under ~100 kB


def _ids(original: bytes) -> dict[str, str]:
    if len(original) > 1 << 20 or not original.lstrip().startswith(b"{"):
        return {}
    try:
        body = json.loads(original)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(body, dict):
        return {}
    return {k: body[k][:128] for k in ("event_id", "patient_id") if isinstance(body.get(k), str)}


def dead_letter_record(reason: str, topic: str, partition: int, offset: int, original: bytes,
                       limit: int = ORIGINAL_LIMIT) -> bytes:
    """The dead-letter record's bytes.

    Args:
        reason: why the event was refused (what its sender reads).
        topic, partition, offset: where the original lies.
        original: the refused record's value.
        limit: bytes of the original to keep (0: none, only its size and hash).
    Returns:
        JSON: reason, where, time, ``original_b64`` (possibly cut), ``original_bytes``,
        ``original_sha256``, ``truncated`` and the ids the original names.
    """
    kept = original[:limit]
    record: dict[str, Any] = {
        "reason": reason[:2000], "topic": topic, "partition": partition, "offset": offset, "time": time.time(),
        "original_b64": base64.b64encode(kept).decode(), "original_bytes": len(original),
        "original_sha256": hashlib.sha256(original).hexdigest(), "truncated": len(kept) < len(original),
        **_ids(original)}
    return json.dumps(record).encode()
