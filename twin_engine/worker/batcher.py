"""Micro-batching of generation requests from all patients, deadline first.

Requests wait at most ``max_wait`` for company (or until ``max_batch`` are queued), then the most
urgent ``max_batch`` go to the accelerator in one call, run in a worker thread so the event loop
keeps publishing and consuming while the model computes. The wait for company never eats into
the most urgent request's slack: a segment regenerated after a state change, due at the next
boundary, goes at once when the boundary is closer than the wait plus one batch's time, and in
a batch no larger than can finish by then (a full batch of windows takes long enough on a CPU to
make it late); a backlog of late requests still goes in full batches.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from collections.abc import Callable

import numpy as np

from twin_engine.metrics import Metrics
from twin_engine.worker.generator import GenRequest

log = logging.getLogger(__name__)


def count_due(heap: list[tuple], now: float, limit: int) -> int:
    """How many heap entries are due (deadline ``entry[0] <= now``), counting at most ``limit``.
    A walk down the heap that stops at entries not yet due (their children are later still), so
    the cost follows ``limit``, a batch, and not the queue, which on a GPU holds a request for
    every live patient."""
    count, todo = 0, [0] if heap and heap[0][0] <= now else []
    while todo and count < limit:
        i = todo.pop()
        count += 1
        todo.extend(c for c in (2 * i + 1, 2 * i + 2) if c < len(heap) and heap[c][0] <= now)
    return count


class MicroBatcher:
    def __init__(self, generate: Callable[[list[GenRequest]], list[np.ndarray]], max_batch: int,
                 max_wait: float, metrics: Metrics) -> None:
        self._generate = generate
        self.max_batch, self.max_wait, self.metrics = max_batch, max_wait, metrics
        self._heap: list[tuple[float, int, GenRequest, asyncio.Future]] = []
        self._counter = itertools.count()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._batch_s = 0.0  # moving average of one batch's generation time
        self._item_s = 0.0  # ... and of one request's share of it (an over-estimate for small batches)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="micro-batcher")

    @property
    def alive(self) -> bool:
        """Whether the batching loop runs (liveness: without it no segment is ever made)."""
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for *_, fut in self._heap:
            fut.cancel()
        self._heap.clear()

    async def submit(self, req: GenRequest, deadline: float) -> np.ndarray:
        """Samples for ``req``; ``deadline`` (monotonic seconds) orders the queue."""
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (deadline, next(self._counter), req, fut))
        self._wake.set()
        return await fut

    def _batch_size(self) -> int:
        """Up to ``max_batch``; fewer when that many would finish after the most urgent request's
        deadline: as many as fit in its slack, or as many as are late already (one late request
        goes alone; a backlog of late ones goes in full batches, the fastest way through)."""
        n = min(self.max_batch, len(self._heap))
        now = time.monotonic()
        slack = self._heap[0][0] - now
        if not math.isfinite(slack) or self._item_s == 0 or slack >= n * self._item_s:
            return n
        late = count_due(self._heap, now, n)
        return max(1, min(n, max(late, int(max(0.0, slack) / self._item_s))))

    async def _run(self) -> None:
        while True:
            if not self._heap:
                self._wake.clear()
                await self._wake.wait()
            first = time.monotonic()
            while len(self._heap) < self.max_batch:
                urgent = self._heap[0][0]  # deadlines are -inf as fast as possible: never urgent
                until = min(first + self.max_wait, urgent - self._batch_s if math.isfinite(urgent) else math.inf)
                if time.monotonic() >= until:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), until - time.monotonic())
                except TimeoutError:
                    break
            batch = [heapq.heappop(self._heap) for _ in range(self._batch_size())]
            batch = [b for b in batch if not b[3].cancelled()]
            if batch:
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[tuple[float, int, GenRequest, asyncio.Future]]) -> None:
        """Generate one batch and hand out its outputs. Any failure, in the model call or after
        it (a model that returns another count of outputs), fails this batch's requests and is
        counted; the loop goes on (it used to end, and every later request waited forever)."""
        t0 = time.perf_counter()
        try:
            outs = await asyncio.to_thread(self._generate, [b[2] for b in batch])
            if len(outs) != len(batch):
                raise RuntimeError(f"generation returned {len(outs)} outputs for {len(batch)} requests")
        except Exception as exc:
            self.metrics.generation_failures.inc()
            log.error("generation of a batch of %d failed: %s: %s", len(batch), exc.__class__.__name__, exc)
            for *_, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        took = time.perf_counter() - t0
        self._batch_s = took if self._batch_s == 0 else 0.8 * self._batch_s + 0.2 * took
        item = took / len(batch)
        self._item_s = item if self._item_s == 0 else 0.8 * self._item_s + 0.2 * item
        self.metrics.generation_latency.observe(took)
        self.metrics.batch_size.observe(len(batch))
        for (_, _, req, fut), out in zip(batch, outs, strict=True):
            self.metrics.segments.inc()
            self.metrics.samples.inc(req.n_samples)
            if not fut.done():
                fut.set_result(out)
