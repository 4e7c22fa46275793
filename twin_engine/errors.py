"""Errors that end a process with a message for its operator and no traceback."""

from __future__ import annotations

from stream.kafka.topics import BrokerError


class FatalError(RuntimeError):
    """The process cannot go on; the message says why and what to do."""


# what the CLI prints as one line and exits 1 on: the broker unreachable at start, or a worker
# that cannot go on
FATAL_ERRORS: tuple[type[Exception], ...] = (FatalError, BrokerError)
