"""Who may read and write through the HTTP API, the WebSocket and the monitor.

Bearer tokens (RFC 6750) with a role each: ``read`` (patients, segments, WebSocket) or
``write`` (that and register / change / remove). Tokens come from ``api_tokens`` (the
environment: ``TWIN_ENGINE_API_TOKENS="write:TOKEN,read:TOKEN"``) and ``api_tokens_file`` (a
secrets file, one ``ROLE TOKEN`` per line); they are compared in constant time. Browsers cannot
set headers on a WebSocket, so there the token rides in the subprotocol list
(``["twin-engine", "bearer.TOKEN"]``, as Kubernetes does), never in the URL or the access log.

Without tokens the API is open to whoever reaches it, so it may bind only a loopback address;
then Host must be a loopback name (a DNS-rebinding page names its own host). Always: a request
with an ``Origin`` must come from the page's own origin or ``allowed_origins`` (a page the user
merely visits cannot drive the API), and writes must be ``application/json`` (a cross-site form
or ``text/plain`` POST needs no CORS preflight).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from twin_engine.config import ConfigError, Settings

log = logging.getLogger(__name__)
ROLES = ("read", "write")
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
WS_PROTOCOL_PREFIX = "bearer."


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address or name) is this machine only."""
    host = host.strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Tokens:
    """The configured tokens, each with its role."""

    entries: tuple[tuple[str, bytes], ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.entries)

    def role_of(self, token: str) -> str | None:
        """The role of ``token`` (None: unknown). Every entry is compared, in constant time."""
        got = token.encode()
        role = None
        for r, t in self.entries:
            if hmac.compare_digest(got, t):
                role = r
        return role

    @staticmethod
    def parse(text: str, source: str, sep: str) -> list[tuple[str, bytes]]:
        out = []
        for n, item in enumerate(text.split(sep), 1):
            item = item.strip()
            if not item or item.startswith("#"):
                continue
            role, _, token = item.replace(":", " ", 1).partition(" ")
            token = token.strip()
            if role not in ROLES or len(token) < 16:
                raise ConfigError(f"{source} entry {n}: expected 'read TOKEN' or 'write TOKEN' with a token of "
                                  "at least 16 characters")
            out.append((role, token.encode()))
        return out

    @classmethod
    def from_settings(cls, s: Settings) -> Tokens:
        """The tokens of ``api_tokens`` and ``api_tokens_file``; ConfigError naming a bad one."""
        entries = cls.parse(s.api_tokens, "api_tokens", ",")
        if s.api_tokens_file:
            path = Path(s.api_tokens_file)
            try:
                text = path.read_text()
            except OSError as exc:
                raise ConfigError(f"api_tokens_file {path} cannot be read ({exc.strerror})") from exc
            entries += cls.parse(text, f"api_tokens_file {path}", "\n")
        return cls(tuple(entries))


def check_exposure(s: Settings, tokens: Tokens, warn: bool = True) -> None:
    """Refuse to serve without credentials on anything but loopback; say so on loopback
    (``warn``)."""
    if tokens.enabled:
        return
    if not is_loopback(s.http_host):
        raise ConfigError(f"http_host {s.http_host} is reachable from other machines and no API tokens are "
                          "configured: set api_tokens or api_tokens_file (a write and a read token), or bind "
                          "127.0.0.1")
    if warn:
        log.warning("no API tokens configured: anyone on this machine can read and change every patient through "
                    "http://%s:%d (loopback only)", s.http_host, s.http_port)


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    for proto in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
        proto = proto.strip()
        if proto.startswith(WS_PROTOCOL_PREFIX):
            return proto[len(WS_PROTOCOL_PREFIX):]
    return None


def _refuse(status: int, error: str, **headers: str) -> web.Response:
    return web.json_response({"error": error}, status=status, headers=headers)


def guard(s: Settings, tokens: Tokens) -> Callable:
    """The aiohttp middleware that checks Host, Origin, credentials, content type and the
    number of writes in flight, in that order, before any handler runs."""
    hosts = {h.strip().lower() for h in s.allowed_hosts.split(",") if h.strip()}
    origins = {o.strip().rstrip("/") for o in s.allowed_origins.split(",") if o.strip()}
    check_host = bool(hosts) or not tokens.enabled
    hosts |= LOOPBACK_NAMES | ({s.http_host.lower()} if not s.http_host.startswith("0.") else set())
    writes = asyncio.Semaphore(s.max_inflight_writes)

    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        path = request.path
        if path in OPEN_PATHS:
            return await handler(request)
        if check_host:
            name = (request.url.host or "").strip("[]").lower()
            if name not in hosts:
                return _refuse(421, "this server does not answer for that Host")
        origin = request.headers.get("Origin")
        if origin is not None and origin.rstrip("/") not in origins | {f"{request.scheme}://{request.host}"}:
            return _refuse(403, "cross-origin requests are not allowed (allowed_origins)")
        write = request.method not in ("GET", "HEAD", "OPTIONS")
        # the page itself holds no patient data (what it fetches is checked); metrics as configured
        public = path == "/" or path.startswith("/static/") or (path == "/metrics" and s.metrics_public)
        if tokens.enabled and not public:
            token = _bearer(request)
            role = tokens.role_of(token) if token else None
            if role is None:
                return _refuse(401, "a bearer token is required", **{"WWW-Authenticate": 'Bearer realm="twin-engine"'})
            if write and role != "write":
                return _refuse(403, "this token may only read")
        if not write:
            return await handler(request)
        # a body, or a POST even without one, must say JSON (a DELETE may come bare)
        if request.content_type != "application/json" and (request.body_exists or request.method == "POST"):
            return _refuse(415, "writes take a JSON body (Content-Type: application/json)")
        if writes.locked():
            return _refuse(429, f"more than {s.max_inflight_writes} writes in flight; try again shortly",
                           **{"Retry-After": "1"})
        async with writes:
            return await handler(request)

    return middleware
