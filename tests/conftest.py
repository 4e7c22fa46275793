"""Shared fixtures: one real Tansu broker per test session, and the shared data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from twin_engine.broker import EmbeddedBroker
from twin_engine.config import default_data_dir

DATA = default_data_dir()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "ptbxl-subset").is_dir():
        pytest.fail(f"shared data not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def broker():
    with EmbeddedBroker() as b:
        yield b
