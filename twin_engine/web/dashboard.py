"""The monitor page and the WebSocket route that serve the hub (``stream.subscribers``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from stream.subscribers import SubscriberHub

STATIC = Path(__file__).parent / "static"


def page_hello(settings: Any, vocab: tuple[str, ...] | list[str]) -> dict:
    """What the page needs to draw the streams: the hub's ``hello`` (``SubscriberHub(hello=...)``)."""
    return {"speed": settings.speed, "segment_seconds": settings.segment_seconds, "vocab": list(vocab)}


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


def add_routes(app: web.Application, hub: SubscriberHub) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/ws", hub.handle)
    app.router.add_static("/static/", STATIC)
