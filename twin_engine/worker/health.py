"""What a worker says of itself: ready (serving restored partitions), failed (cannot go on), and
whether the broker lost what it had acknowledged. One object the partitions, the event loop and
the HTTP probes share."""

from __future__ import annotations

import asyncio
import logging

from twin_engine.metrics import Metrics

log = logging.getLogger(__name__)


class Health:
    """Readiness and failure of one worker.

    Args:
        metrics: ``broker_state_lost`` is set when the broker lost its state.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.ready = asyncio.Event()
        # set when this worker cannot go on (a Kafka error no retry fixes): the process exits
        # with ``failure`` as its message, and the orchestrator's restart or the operator decides
        self.failed = asyncio.Event()
        self.failure: str | None = None
        self.lost: str | None = None  # why the broker is known to have lost state (then never ready)

    def fail(self, reason: str) -> None:
        """Stop serving: not ready, and ``failed`` set for the process to exit with ``reason``."""
        if self.failure is None:
            log.critical("worker cannot go on: %s", reason)
            self.failure = reason
        self.ready.clear()
        self.failed.set()

    def broker_lost(self, reason: str) -> None:
        """The broker no longer holds what it acknowledged: never ready again in this process
        (restoring from it would start fewer patients, silently), and loud about it."""
        if self.lost is None:
            log.critical("THE KAFKA BROKER LOST ITS STATE: %s. This worker stays not ready; patients streamed here "
                         "are not in the registry any more. Restore the broker's data, or register the patients "
                         "again, then restart the workers.", reason)
            self.lost = reason
        self.metrics.broker_state_lost.set(1)
        self.ready.clear()

    def serving(self) -> None:
        """Partitions restored and served: ready, unless failed or the broker lost state."""
        if self.lost is None and self.failure is None:
            self.ready.set()
