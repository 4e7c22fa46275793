from pathlib import Path

import pytest

from twin_engine.config import ConfigError, KafkaConfig, load_settings


def test_defaults_validate():
    s = load_settings(env={})
    assert s.kafka.partitions >= 1 and s.steps >= 1


def test_file_then_env_precedence(tmp_path: Path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('steps = 2\nsegment_seconds = 5\n[kafka]\npartitions = 3\nbootstrap_servers = "h:1"\n')
    s = load_settings(cfg, env={"TWIN_ENGINE_STEPS": "8", "TWIN_ENGINE_KAFKA_PARTITIONS": "6"})
    assert s.steps == 8 and s.segment_seconds == 5.0
    assert s.kafka.partitions == 6 and s.kafka.bootstrap_servers == "h:1"


@pytest.mark.parametrize(
    "env, field",
    [
        ({"TWIN_ENGINE_STEPS": "zero"}, "steps"),
        ({"TWIN_ENGINE_STEPS": "0"}, "steps"),
        ({"TWIN_ENGINE_SEGMENT_SECONDS": "30"}, "segment_seconds"),
        ({"TWIN_ENGINE_KAFKA_SECURITY_PROTOCOL": "TLS"}, "security_protocol"),
        ({"TWIN_ENGINE_NO_SUCH": "1"}, "TWIN_ENGINE_NO_SUCH"),
    ],
)
def test_bad_values_name_the_field(env, field):
    with pytest.raises(ConfigError, match=field):
        load_settings(env=env)


def test_unknown_file_key(tmp_path: Path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[kafka]\npartitons = 3\n")
    with pytest.raises(ConfigError, match="kafka.partitons"):
        load_settings(cfg, env={})


def test_sasl_passthrough():
    s = load_settings(env={
        "TWIN_ENGINE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "TWIN_ENGINE_KAFKA_SASL_MECHANISM": "PLAIN",
        "TWIN_ENGINE_KAFKA_SASL_PLAIN_USERNAME": "u",
        "TWIN_ENGINE_KAFKA_SASL_PLAIN_PASSWORD": "p",
    })
    kw = s.kafka.client_kwargs()
    assert kw["sasl_mechanism"] == "PLAIN" and kw["sasl_plain_username"] == "u"


def test_namespaced_kafka_copy():
    k = load_settings(env={}).kafka
    n = k.namespaced("run1")
    assert n.topic_events == "run1." + k.topic_events and n.group_id == "run1-" + k.group_id
    assert k.topic_events == "twin.conditions"  # the original is untouched


def test_kafka_settings_travel_to_a_child_process_through_the_environment():
    k = KafkaConfig(bootstrap_servers="kafka-0:9093", partitions=12, security_protocol="SASL_SSL",
                    sasl_mechanism="SCRAM-SHA-512", sasl_plain_username="twin", sasl_plain_password="pw",
                    fetch_max_wait_ms=250).namespaced("ward7")
    assert load_settings(env=k.to_env()).kafka == k
