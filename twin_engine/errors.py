"""Errors that end a process with a message for its operator and no traceback."""

from __future__ import annotations


class FatalError(RuntimeError):
    """The process cannot go on; the message says why and what to do."""
