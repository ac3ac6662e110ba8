"""Shared fixtures: an isolated JOURNEY_HOME per test, and the machine's services."""

from __future__ import annotations

import os
import socket

import pytest


def service_up(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@pytest.fixture
def journey_home(tmp_path, monkeypatch):
    """A fresh JOURNEY_HOME (and DAGSTER_HOME inside it) for one test."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("JOURNEY_HOME", str(home))
    (home / "dagster").mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.delenv("JOURNEY_PROFILE", raising=False)
    return home


@pytest.fixture
def settings(journey_home):
    from journey_pipeline.settings import load_settings

    s = load_settings()
    s.ensure_dirs()
    return s


requires_postgres = pytest.mark.skipif(
    not service_up("127.0.0.1", 5432),
    reason="PostgreSQL is not running on 127.0.0.1:5432 (start it: see .ci/run)",
)
requires_redis = pytest.mark.skipif(
    not service_up("127.0.0.1", 6379),
    reason="Redis is not running on 127.0.0.1:6379 (start it: see .ci/run)",
)

os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
