"""Prometheus metrics of one engine instance (own CollectorRegistry, so tests can run several)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # the *_created series double the exposition for no use here

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.segments = Counter("twin_segments_generated", "Segments generated", registry=r)
        self.samples = Counter("twin_samples_generated", "Samples (per lead) generated", registry=r)
        self.published = Counter("twin_segments_published", "Segments published to sinks", registry=r)
        self.generation_latency = Histogram("twin_generation_latency_seconds",
                                            "Wall time of one batched generation call",
                                            buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("twin_generation_batch_size", "Requests per generation batch",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.event_to_effect = Histogram("twin_event_to_effect_seconds",
                                         "From receiving a condition event to publishing the first segment in the new state",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.deadline_misses = Counter("twin_deadline_misses", "Segments published after their due time", registry=r)
        self.kafka_errors = Counter("twin_event_kafka_errors", "Event batches retried because Kafka failed",
                                    registry=r)
        self.generation_failures = Counter("twin_generation_failures", "Generation batches that failed "
                                           "(their requests fail and are made again)", registry=r)
        self.publish_failures = Counter("twin_publish_failures", "Segment publications that failed and were retried",
                                        registry=r)
        self.lag = Gauge("twin_realtime_lag_seconds", "Largest lateness of the last published segments", registry=r)
        self.live_patients = Gauge("twin_live_patients", "Patients with a running stream", registry=r)
        self.held_patients = Gauge("twin_held_patients",
                                   "Registered patients not streamed: their base vector does not fit this model",
                                   registry=r)
        self.broker_state_lost = Gauge("twin_broker_state_lost",
                                       "1 once the broker is seen to have lost records it acknowledged", registry=r)
        self.events = Counter("twin_events", "Events consumed, by type", ["type"], registry=r)
        self.dead_letters = Counter("twin_dead_letter_events", "Events sent to the dead-letter topic",
                                    ["reason"], registry=r)
        self.backend = Gauge("twin_backend_info", "Inference backend in use", ["backend", "device"], registry=r)
        self.ws_dropped = Counter("twin_subscriber_dropped_frames", "Frames dropped for slow subscribers", registry=r)
        self.ws_clients = Gauge("twin_subscribers", "Connected WebSocket subscribers", registry=r)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's current value read through the registry (``twin_segments_published_total``);
        0 where it has none yet."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MonitorMetrics:
    """A monitor's own series (``twin-engine monitor``): it generates nothing, so it exposes no
    engine series that a sum over a deployment's pods would have to leave out."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.records = Counter("twin_monitor_records", "Records read from the deployment's topics, by topic",
                               ["topic"], registry=r)
        self.patients = Gauge("twin_monitor_patients", "Patients in the registry, as the monitor reads it", registry=r)
        self.ws_dropped = Counter("twin_subscriber_dropped_frames", "Frames dropped for slow subscribers", registry=r)
        self.ws_clients = Gauge("twin_subscribers", "Connected WebSocket subscribers", registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def scraped_value(exposition: str, name: str) -> float:
    """The sum over label sets of the samples called ``name`` in a ``/metrics`` text: what a
    test or a benchmark reads back from a running process, through prometheus-client's own
    parser (0 where the series is absent, as before its first sample)."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for f in text_string_to_metric_families(exposition) for s in f.samples if s.name == name)
