"""Running the service as a process: broker (embedded when none is configured), model, service,
HTTP server, signal handling. ``serve`` and ``demo`` both go through ``run_app``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from models.twin import TwinModel
from stream.kafka.embedded import EMBEDDED_PORT, EmbeddedBroker
from twin_engine.backends.runtime import (
    WARM_UP,
    attach_backend,
    batch_limit,
    choose_backend,
    warm_up,
)
from twin_engine.config import Settings
from twin_engine.errors import FatalError
from twin_engine.web.http_api import serve_http
from twin_engine.worker.service import TwinService

log = logging.getLogger(__name__)


def load_model(settings: Settings) -> TwinModel:
    """The model on the configured backend, warmed up where its first call compiles. A backend
    picked by ``auto`` that cannot be set up here (an ONNX export, a compile or a graph capture
    that fails) falls back to PyTorch with a warning; one configured by name fails loudly."""
    backend, device = choose_backend(settings)
    model = TwinModel.load(Path(settings.model_path), "cpu")
    try:
        attach_backend(model, backend, device, settings.cache_dir, batch_limit(settings, device), settings.precision)
        if backend in WARM_UP:  # where compiling or capturing fails, it fails here, not mid-stream
            log.info("backend %s warmed up in %.1f s", backend, warm_up(model, settings))
    except Exception as exc:
        if settings.backend != "auto" or backend == "torch":
            raise
        log.warning("backend %s could not be set up (%s: %s); serving with torch on %s instead",
                    backend, exc.__class__.__name__, exc, device)
        attach_backend(model, "torch", device, settings.cache_dir, batch_limit(settings, device))
    return model


def bootstrap_or_embedded(settings: Settings) -> tuple[str, EmbeddedBroker | None]:
    """The configured Kafka, or a fresh embedded broker on 9092 (or any free port)."""
    if settings.kafka.bootstrap_servers:
        return settings.kafka.bootstrap_servers, None
    from stream.kafka.embedded import _port_open

    port = EMBEDDED_PORT if not _port_open("127.0.0.1", EMBEDDED_PORT) else None
    broker = EmbeddedBroker(port=port).start()
    return broker.bootstrap_servers, broker


async def _until_stopped(duration: float, failed: asyncio.Event | None = None) -> None:
    """Until SIGINT or SIGTERM, ``duration`` seconds (0: no limit), or ``failed`` is set."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    waits = [asyncio.ensure_future(stop.wait())] + ([asyncio.ensure_future(failed.wait())] if failed else [])
    try:
        await asyncio.wait(waits, timeout=duration or None, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def run_service(settings: Settings, model: TwinModel,
                      scenario: Callable[[TwinService], Awaitable[None]] | None = None,
                      duration: float = 0) -> None:
    """Serve until SIGINT/SIGTERM (or ``duration`` seconds); then shut down gracefully."""
    from stream.subscribers import SubscriberHub
    from twin_engine.metrics import Metrics
    from twin_engine.web.dashboard import page_hello
    from twin_engine.worker.sinks import WfdbSink

    metrics = Metrics()
    hub = SubscriberHub(max_clients=settings.ws_max_clients, max_subscription=settings.ws_max_subscription,
                        metrics=metrics, hello=page_hello(settings, model.meta.vocab))
    sinks: list = [hub]
    wfdb_sink = WfdbSink(settings.wfdb_export_dir) if settings.wfdb_export_dir else None
    if wfdb_sink is not None:
        sinks.append(wfdb_sink)
    service = TwinService(settings, model, sinks=sinks, metrics=metrics)
    await service.start()
    try:
        runner = await serve_http(service, settings.http_host, settings.http_port, hub)
    except OSError:  # port taken: leave no consumer or producer behind
        await service.stop()
        raise
    print(f"twin-engine serving: dashboard http://{settings.http_host}:{settings.http_port}/  "
          f"metrics http://{settings.http_host}:{settings.http_port}/metrics  "
          f"kafka {settings.kafka.bootstrap_servers}", flush=True)
    tasks = []
    if scenario is not None:
        tasks.append(asyncio.create_task(scenario(service)))
    try:
        await _until_stopped(duration, service.failed)
    finally:
        log.info("shutting down: finishing in-flight segments")
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await hub.close()
        await service.stop()
        await runner.cleanup()
        if wfdb_sink is not None:
            for path in wfdb_sink.close():
                print(f"wrote WFDB record {path}", flush=True)
    if service.failure is not None:
        raise FatalError(f"the worker stopped: {service.failure}")


def run_app(settings: Settings, scenario=None, duration: float = 0) -> int:
    from twin_engine.web.auth import Tokens, check_exposure

    check_exposure(settings, Tokens.from_settings(settings))  # before anything starts
    model = load_model(settings)
    bootstrap, broker = bootstrap_or_embedded(settings)
    settings.kafka.bootstrap_servers = bootstrap
    try:
        asyncio.run(run_service(settings, model, scenario, duration))
    finally:
        if broker is not None:
            broker.stop()
    return 0


async def run_monitor(settings: Settings, duration: float = 0) -> None:
    """A monitor (``twin_engine.web.monitor``) on the configured Kafka, or on the embedded broker's
    default port where none is configured (a monitor starts no broker: it watches one)."""
    from twin_engine.ops.clients import with_default_broker
    from twin_engine.web.auth import Tokens, check_exposure
    from twin_engine.web.monitor import Monitor

    check_exposure(settings, Tokens.from_settings(settings))
    monitor = Monitor(with_default_broker(settings))
    await monitor.start()
    try:
        runner = await serve_http(monitor, settings.http_host, settings.http_port, monitor.hub)
    except OSError:
        await monitor.stop()
        raise
    url = f"http://{settings.http_host}:{settings.http_port}"
    print(f"twin-engine monitor: dashboard {url}/  patients {url}/patients  metrics {url}/metrics  "
          f"kafka {settings.kafka.bootstrap_servers}", flush=True)
    try:
        await _until_stopped(duration)
    finally:
        await monitor.stop()
        await runner.cleanup()
