"""One typed place for configuration.

Precedence: defaults < TOML file (``--config`` or ``TWIN_ENGINE_CONFIG``) < environment
variables ``TWIN_ENGINE_<FIELD>`` (upper case; nested Kafka fields as ``TWIN_ENGINE_KAFKA_<FIELD>``).
Every value is checked once, here, so that a typo fails at start-up with the field's name
rather than deep inside aiokafka or torch. (About 300 lines: every field with its default and
its reason, which is the point of having one place.)
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream.kafka.topics import TopicSpec
from twin_engine.backends.registry import BACKEND_NAMES

ENV_PREFIX = "TWIN_ENGINE_"
REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the field."""


def default_data_dir() -> Path:
    """``../shared/data`` beside the checkout: where the shared real ECG lives."""
    return REPO_ROOT.parent / "shared" / "data"


@dataclass
class KafkaConfig:
    """Connection settings passed through to aiokafka unchanged (SASL/TLS included)."""

    bootstrap_servers: str = ""  # empty: start the embedded broker
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL
    sasl_mechanism: str = ""  # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    sasl_plain_username: str = ""
    sasl_plain_password: str = field(default="", repr=False)
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    client_id: str = "twin-engine"
    group_id: str = "twin-engine"
    partitions: int = 8
    replication_factor: int = 1
    topic_events: str = "twin.conditions"
    topic_segments: str = "twin.segments"
    topic_annotations: str = "twin.annotations"
    topic_dead_letter: str = "twin.conditions.dlq"
    topic_registry: str = "twin.registry"  # compacted changelog of patients
    # how long a fetch may wait for data: Tansu answers a fetch only at this deadline (116 ms
    # median event pickup at aiokafka's default 500, 7.5 ms at 50; measured 2026-11-25), Apache
    # Kafka answers as soon as data arrives; low costs only idle fetch requests
    fetch_max_wait_ms: int = 10
    # how long the service's producer holds a record for company: every hop of a condition
    # change (event -> registry -> segment) waited this long at 5 ms; records still batch
    # while a request is in flight
    linger_ms: int = 0
    # the idempotent producer (no duplicate records on a retried send): on, off, or auto (on
    # where the brokers hand out producer ids: Apache Kafka yes, Tansu no)
    idempotence: str = "auto"
    # at start, how long to keep trying a broker that does not answer (then exit, saying so)
    connect_timeout_s: float = 60.0

    TOPIC_FIELDS = ("topic_events", "topic_segments", "topic_annotations", "topic_dead_letter", "topic_registry")

    def namespaced(self, prefix: str) -> KafkaConfig:
        """A copy whose group and topics carry ``prefix``: isolated runs on one shared broker
        (benchmarks, tests, several demos)."""
        out = dataclasses.replace(self, group_id=f"{prefix}-{self.group_id}")
        for name in self.TOPIC_FIELDS:
            setattr(out, name, f"{prefix}.{getattr(self, name)}")
        return out

    def topic_specs(self) -> list[TopicSpec]:
        """The topics a deployment uses; workers and monitors create the missing ones at start."""
        return [TopicSpec(self.topic_events, self.partitions), TopicSpec(self.topic_segments, self.partitions),
                TopicSpec(self.topic_annotations, self.partitions), TopicSpec(self.topic_dead_letter, self.partitions),
                TopicSpec(self.topic_registry, self.partitions, compacted=True)]

    def to_env(self) -> dict[str, str]:
        """The ``TWIN_ENGINE_KAFKA_*`` variables that configure a child process (a worker or a
        monitor that a test or a benchmark starts) with exactly these settings."""
        return {f"{ENV_PREFIX}KAFKA_{f.name.upper()}": str(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments common to aiokafka producers, consumers and admin clients."""
        kw: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
            "client_id": self.client_id,
        }
        if self.sasl_mechanism:
            kw.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_plain_username,
                sasl_plain_password=self.sasl_plain_password,
            )
        if self.security_protocol in ("SSL", "SASL_SSL"):
            import ssl

            ctx = ssl.create_default_context(cafile=self.ssl_cafile or None)
            if self.ssl_certfile:
                ctx.load_cert_chain(self.ssl_certfile, self.ssl_keyfile or None)
            kw["ssl_context"] = ctx
        return kw

    def validate_security(self) -> None:
        """ConfigError where the security settings cannot work: a SASL protocol without a
        mechanism or credentials, a mechanism without SASL, a CA or key file that cannot be read
        (aiokafka would fail later, deep in a connection, or silently connect in plain text)."""
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and not self.sasl_mechanism:
            raise ConfigError(f"kafka.security_protocol {self.security_protocol} needs kafka.sasl_mechanism")
        if self.sasl_mechanism and not sasl:
            raise ConfigError(f"kafka.sasl_mechanism {self.sasl_mechanism} needs security_protocol SASL_PLAINTEXT "
                              "or SASL_SSL")
        if sasl and not (self.sasl_plain_username and self.sasl_plain_password):
            raise ConfigError("kafka.sasl_plain_username and kafka.sasl_plain_password are required with SASL")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path and self.security_protocol in ("SSL", "SASL_SSL") and not os.access(path, os.R_OK):
                raise ConfigError(f"kafka.{name} {path} cannot be read")
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ConfigError("kafka.ssl_keyfile needs kafka.ssl_certfile")

    def consumer_kwargs(self) -> dict[str, Any]:
        """``client_kwargs`` plus what only consumers take."""
        return {**self.client_kwargs(), "fetch_max_wait_ms": self.fetch_max_wait_ms}


@dataclass
class Settings:
    """Everything the service, CLI and training read."""

    data_dir: Path = field(default_factory=default_data_dir)
    model_path: Path = field(default_factory=lambda: REPO_ROOT / "models" / "default")
    cache_dir: Path = field(default_factory=lambda: REPO_ROOT / "runs" / "cache")  # ONNX / engines
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    backend: str = "auto"  # auto, torch, torch-compile, cuda-graphs, onnxruntime, tensorrt
    precision: str = "fp16"  # cuda-graphs on a GPU: fp16, bf16 or fp32 (docs/BENCHMARKS.md, GPU)
    sampler: str = "auto"  # the model's distilled student where it has one, else dpmpp2m
    denoiser: str = "auto"  # auto, teacher (the DiT, guided), student (distilled: DDIM at its steps)
    steps: int = 4  # the distilled student's count: better than the teacher at 8 (docs/EVALUATION.md)
    guidance_scale: float = 1.5
    # contrastive guidance (the model's weight per morphology statement, away from a normal ECG)
    # for states that do not say (``"contrast"`` in an event's state): the judge tells CLBBB twins
    # from normal at 0.99 instead of 0.75, but a guided twin is less its patient (CLBBB identity
    # 0.84 -> 0.31) and detectors read some guided banks worse (docs/EVALUATION.md)
    contrast_guidance: bool = False
    # ... but a state that adds a morphology statement the patient was not registered with (a
    # normal patient asked for LBBB) is drawn with it unless it says: what its reference does not
    # show, the model draws too weakly alone, and a twin in its reference's own state needs none
    # (docs/EVALUATION.md, contrastive guidance)
    contrast_new_morphology: bool = True
    segment_seconds: float = 2.0
    # streams drawn by the rhythm layer (beats where a schedule says, with their ground truth);
    # off, or where the model's windows give no beats to draw: the model's own windows
    rhythm_layer: bool = True
    lookahead_segments: int = 2
    speed: float = 1.0  # 1.0 real time; 0 as fast as possible; N: N x real time
    max_batch: int = 0  # 0: 16 on the CPU, 4096 on a GPU (runtime.batch_limit; docs/BENCHMARKS.md)
    max_wait_ms: float = 20.0
    wfdb_export_dir: str = ""  # non-empty: each patient's stream as a WFDB record there, as published
    restore_timeout_s: float = 120.0  # one try at restoring assigned partitions' registry
    restore_attempts: int = 5  # tries before the worker gives up and exits
    broker_check_s: float = 5.0  # how often the broker is checked for lost state
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # who may use the API (twin_engine.web.auth): "write:TOKEN,read:TOKEN" and/or a secrets file of
    # "ROLE TOKEN" lines; none: loopback only, and the service says so
    api_tokens: str = field(default="", repr=False)
    api_tokens_file: str = ""
    metrics_public: bool = True  # /metrics without a token (Prometheus scrapes it); false: read role
    allowed_hosts: str = ""  # Host names the API answers for besides loopback (comma-separated)
    allowed_origins: str = ""  # browser origins besides the page's own (comma-separated)
    # bounds on the work one caller can ask for, each refused with the reason past it
    max_request_bytes: int = 1 << 20  # an HTTP body (413)
    max_inflight_writes: int = 64  # HTTP writes waiting for the broker at once (429)
    ws_max_clients: int = 256  # live WebSocket subscribers (503)
    ws_max_subscription: int = 1000  # patient ids one subscription names
    max_reference_records: int = 16  # WFDB records one registration reads
    max_reference_seconds: float = 600.0  # seconds of reference ECG one registration reads
    max_patients_per_worker: int = 5000  # registrations past it are dead-lettered
    max_patients: int = 20000  # per deployment: each partition holds its share (max_patients / partitions)
    seed: int = 0
    kafka: KafkaConfig = field(default_factory=KafkaConfig)

    def validate(self) -> Settings:
        """Raise ConfigError naming the first bad field."""
        checks = [
            ("device", self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda")),
            ("backend", self.backend in ("auto", *BACKEND_NAMES)),
            ("precision", self.precision in ("fp16", "bf16", "fp32")),
            ("sampler", self.sampler in ("auto", "distilled", "ddpm", "ddim", "dpmpp2m")),
            ("denoiser", self.denoiser in ("auto", "teacher", "student")),
            ("steps", 1 <= self.steps <= 1000),
            ("guidance_scale", 0.0 <= self.guidance_scale <= 20.0),
            ("segment_seconds", 1.0 <= self.segment_seconds <= 10.0),
            ("lookahead_segments", 1 <= self.lookahead_segments <= 100),
            ("speed", self.speed >= 0.0),
            ("max_batch", 0 <= self.max_batch <= 65536),
            ("max_wait_ms", 0.0 <= self.max_wait_ms <= 10_000),
            ("http_port", 0 <= self.http_port <= 65535),
            ("kafka.partitions", 1 <= self.kafka.partitions <= 10_000),
            ("kafka.replication_factor", self.kafka.replication_factor >= 1),
            ("kafka.fetch_max_wait_ms", 0 <= self.kafka.fetch_max_wait_ms <= 60_000),
            ("kafka.linger_ms", 0 <= self.kafka.linger_ms <= 60_000),
            ("restore_timeout_s", 1.0 <= self.restore_timeout_s <= 3600),
            ("restore_attempts", 1 <= self.restore_attempts <= 100),
            ("broker_check_s", 0.1 <= self.broker_check_s <= 3600),
            ("kafka.connect_timeout_s", 0 <= self.kafka.connect_timeout_s <= 3600),
            ("kafka.idempotence", self.kafka.idempotence in ("auto", "on", "off")),
            (
                "kafka.security_protocol",
                self.kafka.security_protocol in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
            ),
            (
                "kafka.sasl_mechanism",
                self.kafka.sasl_mechanism in ("", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
            ),
        ]
        checks += [
            ("max_request_bytes", 1024 <= self.max_request_bytes <= 64 << 20),
            ("max_inflight_writes", 1 <= self.max_inflight_writes <= 100_000),
            ("ws_max_clients", 1 <= self.ws_max_clients <= 100_000),
            ("ws_max_subscription", 1 <= self.ws_max_subscription <= 1_000_000),
            ("max_reference_records", 1 <= self.max_reference_records <= 1000),
            ("max_reference_seconds", 1.0 <= self.max_reference_seconds <= 86_400),
            ("max_patients_per_worker", 1 <= self.max_patients_per_worker <= 10_000_000),
            ("max_patients", 1 <= self.max_patients <= 100_000_000),
        ]
        for name, ok in checks:
            if not ok:
                raise ConfigError(f"invalid value for {name}: {self._get(name)!r}")
        self.kafka.validate_security()
        return self

    def _get(self, dotted: str) -> Any:
        obj: Any = self
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj


def _coerce(name: str, value: Any, typ: Any) -> Any:
    """Convert a TOML or environment value to the field's declared type."""
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if typ is Path:
            return Path(value).expanduser()
        return typ(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid value for {name}: {value!r} (expected {typ.__name__})") from exc


def _apply(obj: Any, values: dict[str, Any], prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"unknown configuration key: {prefix}{key}")
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{key} must be a table")
            _apply(getattr(obj, key), value, f"{prefix}{key}.")
        else:
            setattr(obj, key, _coerce(prefix + key, value, typ))


def _env_values(env: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    kafka_fields = {f.name for f in dataclasses.fields(KafkaConfig)}
    top_fields = {f.name for f in dataclasses.fields(Settings)} - {"kafka"}
    for raw, value in env.items():
        if not raw.startswith(ENV_PREFIX) or raw == ENV_PREFIX + "CONFIG":
            continue
        key = raw[len(ENV_PREFIX) :].lower()
        if key.startswith("kafka_") and key[6:] in kafka_fields:
            out.setdefault("kafka", {})[key[6:]] = value
        elif key in top_fields:
            out[key] = value
        else:
            raise ConfigError(f"unknown environment variable: {raw}")
    return out


def load_settings(
    path: str | Path | None = None,
    env: dict[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build validated Settings from defaults, a TOML file, the environment and overrides."""
    env = dict(os.environ) if env is None else env
    settings = Settings()
    path = path or env.get(ENV_PREFIX + "CONFIG")
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
        _apply(settings, data, "")
    _apply(settings, _env_values(env), "")
    _apply(settings, {k: v for k, v in overrides.items() if v is not None}, "")
    return settings.validate()
