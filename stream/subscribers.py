"""Live subscriptions over WebSocket: the hub every segment and annotation fans out to.

Each client has a bounded queue: when a slow client's queue is full, new frames for it are
dropped and counted (per client and in ``twin_subscriber_dropped_frames``), never buffered
without bound. A segment is serialised once and the same bytes go to every subscriber.

A client gets only what it subscribed to, from its first frame: ``/ws?patients=bed-1,bed-2``
(or ``*``) at connect, nothing until then. Client -> server: ``{"subscribe": ["bed-1", "bed-2"]}``
or ``{"subscribe": "*"}`` changes it (at most ``max_subscription`` ids). At most ``max_clients``
connect at once (503 past that).
Server -> client: ``{"type": "hello", ...}``, ``{"type": "segment", ...segment fields}``,
``{"type": "annotation", ...}`` (a state interval), ``{"type": "beats", ...}``, ``{"type": "rhythm", ...}``, ``{"type": "removed", "patient_id": ...}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from stream.events import EventError, json_value
from stream.segments import Annotation, GroundTruth, Segment

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Subscriber:
    ws: web.WebSocketResponse
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(maxsize=64))
    patients: set[str] | None = field(default_factory=set)  # None: all; empty: none yet
    dropped: int = 0
    sent: int = 0

    def wants(self, pid: str) -> bool:
        return self.patients is None or pid in self.patients


class SubscriberHub:
    """A sink (see twin_engine.worker.sinks) that fans segments out to WebSocket subscribers."""

    def __init__(self, queue_frames: int = 64, deflate: bool = False, max_clients: int = 256,
                 max_subscription: int = 1000, metrics: Any = None, hello: dict | None = None) -> None:
        """``metrics``: anything with ``ws_dropped`` and ``ws_clients`` (the worker's or the
        monitor's), or None. ``hello``: what a page needs to draw the streams (speed,
        segment_seconds, vocab), sent to each client first."""
        self.queue_frames = queue_frames
        self.max_clients, self.max_subscription = max_clients, max_subscription
        # permessage-deflate, which browsers always offer, costs each subscriber its own
        # compression of every frame (a connection keeps its own deflate state), about as much
        # CPU as the service spends on the segment itself, for 1.4x fewer bytes of base64; so
        # it is declined. ``deflate=True`` accepts it (bench ws measures the difference).
        self.deflate = deflate
        self.clients: set[Subscriber] = set()
        self.metrics = metrics
        self.hello: dict = {"speed": 1.0, "segment_seconds": None, "vocab": [], **(hello or {})}

    def _offer(self, pid: str, frame: str) -> None:
        for c in self.clients:
            if not c.wants(pid):
                continue
            try:
                c.queue.put_nowait(frame)
            except asyncio.QueueFull:
                c.dropped += 1
                if self.metrics is not None:
                    self.metrics.ws_dropped.inc()

    async def segment(self, seg: Segment) -> None:
        if any(c.wants(seg.patient_id) for c in self.clients):
            self._offer(seg.patient_id, seg.to_json(type="segment").decode())

    def relay_segment(self, patient_id: str, record: bytes) -> None:
        """A segment record as it lies on the segments topic (``Segment.to_json``): the frame is
        the record with its type put first, never decoded, so that a monitor reading the whole
        topic pays per segment only for the patients someone is watching."""
        if record[:2] == b'{"' and any(c.wants(patient_id) for c in self.clients):
            self._offer(patient_id, '{"type": "segment", ' + record[1:].decode())

    async def annotation(self, ann: GroundTruth) -> None:
        """A state interval (frame type ``annotation``), a segment's beats (``beats``) or a
        rhythm episode (``rhythm``)."""
        if self.clients:
            kind = "annotation" if isinstance(ann, Annotation) else ann.frame()["kind"]
            self._offer(ann.patient_id, json.dumps({**ann.frame(), "type": kind}))

    async def removed(self, patient_id: str) -> None:
        if self.clients:  # pages drop the patient's card
            self._offer(patient_id, json.dumps({"type": "removed", "patient_id": patient_id}))

    async def close(self) -> None:
        for c in list(self.clients):
            await c.ws.close()

    def _subscription(self, sub: object) -> set[str] | None:
        """The patients a ``subscribe`` value names (None: all); ValueError saying why not."""
        if sub == "*":
            return None
        if isinstance(sub, str):
            sub = [p for p in sub.split(",") if p]
        if not isinstance(sub, list) or not all(isinstance(p, str) for p in sub):
            raise ValueError('subscribe takes a list of patient ids or "*"')
        if len(sub) > self.max_subscription:
            raise ValueError(f"a subscription names at most {self.max_subscription} patients (or \"*\" for all)")
        return set(sub)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if len(self.clients) >= self.max_clients:
            return web.json_response({"error": f"at most {self.max_clients} live subscribers; try again later"},
                                     status=503)
        try:
            patients = self._subscription(request.query.get("patients", ""))
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        ws = web.WebSocketResponse(heartbeat=20, compress=self.deflate, max_msg_size=256 * 1024,
                                   protocols=("twin-engine",))
        await ws.prepare(request)
        client = Subscriber(ws, asyncio.Queue(maxsize=self.queue_frames), patients)
        self.clients.add(client)
        if self.metrics is not None:
            self.metrics.ws_clients.set(len(self.clients))
        writer = asyncio.create_task(self._write(client))
        await ws.send_str(json.dumps({"type": "hello", **self.hello}))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    body = json_value(msg.data)
                except EventError:
                    await ws.send_str(json.dumps({"type": "error", "error": "not JSON"}))
                    continue
                if not isinstance(body, dict) or "subscribe" not in body:
                    continue
                try:
                    client.patients = self._subscription(body["subscribe"])
                except ValueError as exc:
                    await ws.send_str(json.dumps({"type": "error", "error": str(exc)}))
        finally:
            self.clients.discard(client)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            if self.metrics is not None:
                self.metrics.ws_clients.set(len(self.clients))
        return ws

    async def _write(self, client: Subscriber) -> None:
        while True:
            frame = await client.queue.get()
            try:
                await client.ws.send_str(frame)
                client.sent += 1
            except (ConnectionResetError, RuntimeError):
                return
