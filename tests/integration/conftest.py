"""Integration fixtures: one real Tansu broker (Kafka protocol over TCP) per test session."""

from __future__ import annotations

import pytest

from stream.kafka.embedded import EmbeddedBroker


@pytest.fixture(scope="session")
def broker():
    with EmbeddedBroker() as b:
        yield b
