"""Partitions changing hands: on assignment the registry restore and the patients' streams, on
revocation their end. aiokafka calls this listener from its rebalance."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from twin_engine.config import Settings
from twin_engine.registry import BrokerStateLost, Registry, partition_of
from twin_engine.worker.clock import StreamClock
from twin_engine.worker.health import Health
from twin_engine.worker.streams import Streams

log = logging.getLogger(__name__)


class Partitions(ConsumerRebalanceListener):
    """The event partitions this worker owns, and their patients.

    Args:
        settings: restore deadline and tries, the topics' partition count.
        registry, streams, clock, health: the worker's collaborators.
        lock: the worker's partition lock: rebalance callbacks and event handling never
            interleave (aiokafka may deliver records of a partition while its
            ``on_partitions_assigned``, the registry restore, still runs).
    """

    def __init__(self, settings: Settings, registry: Registry, streams: Streams, clock: StreamClock,
                 health: Health, lock: asyncio.Lock) -> None:
        self.settings, self.registry, self.streams, self.clock = settings, registry, streams, clock
        self.health, self.lock = health, lock
        self.kafka_kwargs = settings.kafka.client_kwargs()
        self.owned: set[int] = set()
        self.closing = False  # the worker is stopping: no restore starts

    async def on_partitions_assigned(self, assigned) -> None:
        async with self.lock:
            await self._acquire(sorted(tp.partition for tp in assigned))

    async def on_partitions_revoked(self, revoked) -> None:
        async with self.lock:
            await self._release({tp.partition for tp in revoked})

    async def _restore(self, partitions: list[int]) -> list[str] | None:
        """The registry restore of ``partitions``, each try under a deadline, tried again with a
        back-off (aiokafka swallows what its rebalance listener raises: a failed restore would
        leave the partitions assigned and unserved). None: given up or the broker lost state,
        and the worker is failed or not ready, saying why."""
        s = self.settings
        for attempt in range(1, s.restore_attempts + 1):
            if self.health.lost is not None or self.closing:
                return None  # nothing to restore from a broker that lost its data, or stopping
            try:
                return await asyncio.wait_for(self.registry.restore(self.kafka_kwargs, partitions), s.restore_timeout_s)
            except BrokerStateLost as exc:
                self.health.broker_lost(str(exc))
                return None
            except (KafkaError, OSError, TimeoutError) as exc:
                what = "timed out" if isinstance(exc, TimeoutError) else f"failed ({exc.__class__.__name__}: {exc})"
                log.error("restoring partitions %s %s, try %d of %d", partitions, what, attempt, s.restore_attempts)
                if attempt < s.restore_attempts:
                    await asyncio.sleep(min(30.0, 2.0 ** attempt))
        self.health.fail(f"the registry of partitions {partitions} could not be restored in {s.restore_attempts} "
                         f"tries of {s.restore_timeout_s:g} s")
        return None

    async def _acquire(self, partitions: list[int]) -> None:
        restored = await self._restore(partitions)
        if restored is None:
            return
        self.owned |= set(partitions)
        if not self.streams and self.clock.speed > 1:
            # nothing streams here yet: the clock goes on from the restored streams' time, not
            # from the wall clock they ran ahead of (to one segment before the latest next
            # segment: where the last ones published started); once streams run here it keeps
            # its pace, and patients taken over later wait for it
            ahead = [p.start_time(p.next_seq - 1, p.segment_seconds) for p in
                     (self.registry.patients[pid] for pid in restored)
                     if p.stream_start is not None and p.segment_seconds]
            if ahead:
                self.clock.advance_to(max(ahead))
        for pid in restored:
            if pid not in self.streams:
                self.streams.start_or_hold(self.registry.patients[pid])
        log.info("owning partitions %s: %d patients restored", partitions, len(restored))
        self.health.serving()

    async def _release(self, partitions: set[int]) -> None:
        if not partitions:
            return
        n = self.settings.kafka.partitions
        await self.streams.stop_where(lambda pid: partition_of(pid, n) not in partitions)
        self.registry.drop_partitions(partitions)
        self.owned -= partitions
        if not self.owned:  # ready means serving partitions; a rebalance hands them out again
            self.health.ready.clear()
