"""HTTP API: health, readiness, metrics, patients, state, artifacts; served by a worker or a monitor.

Writes (register, change state, remove) are turned into events on the events topic, the same
path a Kafka producer or the CLI takes, so they are validated, ordered per patient, durable and
dead-lettered exactly like any other event. Reads answer from the frontend's view: a worker
(``TwinService``) knows the patients of its partitions, a monitor (``twin_engine.web.monitor``)
every patient of the deployment.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from aiohttp.web_log import AccessLogger
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from models.rhythm.pacing import stream_problem
from stream.events import (
    Event,
    EventError,
    json_value,
    new_event_id,
    parse_event,
    state_to_dict,
)
from stream.subscribers import SubscriberHub
from twin_engine.config import Settings
from twin_engine.web.auth import Tokens, check_exposure, guard
from twin_engine.web.dashboard import add_routes, page_hello


class Frontend(Protocol):
    """What the API serves from."""

    settings: Settings
    metrics: Any  # exposition() -> bytes
    ready: asyncio.Event
    vocab: tuple[str, ...]
    fs: int

    def patient_ids(self) -> list[str]: ...

    def patient_view(self, pid: str) -> dict | None: ...

    def why_unknown(self, pid: str) -> str: ...

    def unhealthy(self) -> str | None: ...

    async def send_event(self, ev: Event) -> None: ...


SERVICE = web.AppKey("service", Frontend)
TOKENS = web.AppKey("tokens", Tokens)
log = logging.getLogger(__name__)


def _json(data, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=str))


def _event_from_body(body: dict, patient_id: str, typ: str, service: Frontend) -> Event:
    body = {"schema_version": 1, "event_id": body.get("event_id") or new_event_id(),
            "patient_id": patient_id, "type": typ, **{k: v for k, v in body.items() if k != "patient_id"}}
    body["type"] = typ
    ev = parse_event(json.dumps(body), service.vocab)
    if stream_problem(ev.rhythm):
        raise EventError(stream_problem(ev.rhythm))
    if ev.rhythm is not None and not service.settings.rhythm_layer:
        raise EventError("this deployment's rhythm layer is off (rhythm_layer): it draws no named rhythms")
    if ev.artifact is not None and not service.settings.rhythm_layer:
        raise EventError("this deployment's rhythm layer is off (rhythm_layer): it draws no artifacts")
    return ev


async def health(request: web.Request) -> web.Response:
    """Liveness: 503 once the process should be restarted (its batcher stopped, or it failed)."""
    problem = request.app[SERVICE].unhealthy()
    return _json({"status": "ok"}) if problem is None else _json({"status": "failing"}, 503)


async def ready(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    ok = svc.ready.is_set()
    return _json({"ready": ok, "patients": len(svc.patient_ids())}, 200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[SERVICE].metrics.exposition(),
                        content_type="text/plain", charset="utf-8")


async def list_patients(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    views = (svc.patient_view(pid) for pid in svc.patient_ids())
    return _json({"patients": [v for v in views if v is not None]})


async def get_patient(request: web.Request) -> web.Response:
    svc, pid = request.app[SERVICE], request.match_info["pid"]
    view = svc.patient_view(pid)
    return _json(view) if view else _json({"error": svc.why_unknown(pid)}, 404)


async def _body(request: web.Request) -> dict:
    """The request's JSON object ({} without a body)."""
    if not request.body_exists:
        return {}
    try:
        body = json_value(await request.read())
    except EventError as exc:
        raise EventError(f"body is {exc}") from exc
    if not isinstance(body, dict):
        raise EventError("body must be a JSON object")
    return body


async def _send(request: web.Request, pid: str | None, typ: str) -> web.Response:
    """Validate the request as an event of type ``typ`` and send it (202), or say why not (400).
    ``pid`` None: the patient id is the body's ``patient_id``."""
    svc = request.app[SERVICE]
    try:
        body = await _body(request)
        if pid is None:
            if not isinstance(body.get("patient_id"), str):
                raise EventError("body must be a JSON object with patient_id and reference")
            pid = body["patient_id"]
        ev = _event_from_body(body, pid, typ, svc)
    except EventError as exc:
        return _json({"error": str(exc)}, 400)
    try:
        await svc.send_event(ev)
    except MessageSizeTooLargeError:
        return _json({"error": "the event is too large for the events topic"}, 413)
    except KafkaError as exc:  # the broker unreachable past the producer's retries: try later
        # the exception's text (addresses, internals) goes to the log, not to the caller
        log.warning("event %s not sent: %s: %s", ev.event_id, exc.__class__.__name__, exc)
        return _json({"error": "the event could not be sent to the broker; nothing was changed, send it again"},
                     503)
    return _json({"accepted": True, "event_id": ev.event_id, "patient_id": pid,
                  "state": state_to_dict(ev.state) if ev.state else None}, 202)


async def create_patient(request: web.Request) -> web.Response:
    return await _send(request, None, "register")


async def change_state(request: web.Request) -> web.Response:
    return await _send(request, request.match_info["pid"], "condition")


async def add_artifact(request: web.Request) -> web.Response:
    """``{"artifact": {"kind": "ma", "snr": 6, "duration": 20, "leads": ["II"]}}``, from the
    body's ``effective_time`` or the next segment."""
    return await _send(request, request.match_info["pid"], "artifact")


async def delete_patient(request: web.Request) -> web.Response:
    return await _send(request, request.match_info["pid"], "remove")


MITDB_LISTED = 8  # MIT-BIH records a page offers, a minute of each (the whole is past max_reference_seconds)


async def list_records(request: web.Request) -> web.Response:
    """Shared reference records a page can onboard a patient from: held-out PTB-XL patients
    (12 leads) and a minute of some MIT-BIH records (2 leads, the others estimated), each with
    the ``reference`` to register it with."""
    svc = request.app[SERVICE]
    try:  # read once (PTB-XL's table, MIT-BIH's headers), off the loop every stream shares
        rows = await asyncio.to_thread(_record_rows, svc.settings.data_dir, svc.fs)
    except Exception:
        log.exception("the shared records could not be listed")
        return _json({"records": [], "error": "the shared records could not be read"})
    return _json({"records": list(rows)})


@functools.lru_cache(maxsize=4)
def _record_rows(data_dir: Path, fs: int) -> tuple[dict, ...]:
    """The rows of ``list_records`` (a failure is raised, not kept)."""
    import wfdb

    from models.data.ptbxl import PTBXL

    db = PTBXL(data_dir / "ptbxl-subset", fs)
    _, held = db.split()
    rows = []
    for i in held[:40]:
        path, codes = f"ptbxl-subset/{db.df.at[i, db.filename_column]}", sorted(db.df.at[i, "scp_codes"])
        rows.append({"path": path, "ecg_id": i, "codes": codes, "label": f"{i} {','.join(codes)}",
                     "reference": {"wfdb": path}})
    for hea in sorted((data_dir / "mitdb").glob("*.hea"))[:MITDB_LISTED]:
        try:
            leads = wfdb.rdheader(str(hea.with_suffix(""))).sig_name
        except Exception:  # a damaged header is not offered
            continue
        rows.append({"path": f"mitdb/{hea.stem}", "label": f"MIT-BIH {hea.stem} ({', '.join(leads)}), minute 2",
                     "reference": {"wfdb": f"mitdb/{hea.stem}", "start": 60, "seconds": 60}})
    return tuple(rows)


def build_app(service: Frontend, hub: SubscriberHub | None = None) -> web.Application:
    """The API's routes behind the guard (``twin_engine.web.auth``); ConfigError for bad tokens."""
    s = service.settings
    tokens = Tokens.from_settings(s)
    app = web.Application(middlewares=[guard(s, tokens)], client_max_size=s.max_request_bytes)
    app[SERVICE] = service
    app[TOKENS] = tokens
    if hub is not None:
        if hub.hello != page_hello(s, service.vocab):  # the page would draw with another vocabulary or speed
            raise ValueError("the hub's hello is not this service's: SubscriberHub(hello=page_hello(settings, vocab))")
        add_routes(app, hub)
    app.router.add_get("/api/records", list_records)
    app.router.add_get("/healthz", health)
    app.router.add_get("/readyz", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/patients", list_patients)
    app.router.add_post("/patients", create_patient)
    app.router.add_get("/patients/{pid}", get_patient)
    app.router.add_delete("/patients/{pid}", delete_patient)
    app.router.add_post("/patients/{pid}/state", change_state)
    app.router.add_post("/patients/{pid}/artifacts", add_artifact)
    return app


# what orchestrators and Prometheus call every few seconds
PROBES = frozenset({"/healthz", "/readyz", "/metrics"})


class ApiAccessLogger(AccessLogger):
    """aiohttp's access log without the probes and scrapes. Each worker got a line every few
    seconds from its orchestrator and from Prometheus (twelve workers scraped every half second
    in a benchmark filled their logs with nothing else), burying the API's own requests."""

    def log(self, request, response, time: float) -> None:
        if request.path not in PROBES:
            super().log(request, response, time)


async def serve_http(service: Frontend, host: str, port: int,
                     hub: SubscriberHub | None = None) -> web.AppRunner:
    """Serve the API on ``host:port``. ConfigError: a non-loopback ``host`` without tokens."""
    app = build_app(service, hub)
    check_exposure(replace(service.settings, http_host=host), app[TOKENS], warn=False)
    runner = web.AppRunner(app, access_log_class=ApiAccessLogger)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
