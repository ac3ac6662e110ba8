"""Fixtures of the serve tests: a quickstart home built once per session (online features in
a real SQLite Feast store, two policies in a real MLflow SQLite registry, version 1 the
champion), copied into each test's own JOURNEY_HOME."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from journey_pipeline.serve.quickstart import QuickstartHome, prepare_quickstart_home
from journey_pipeline.settings import Settings, load_settings

API_KEY = "serve-test-key-7f3a"


@dataclass(frozen=True)
class ServedHome:
    settings: Settings
    contact_ids: list[str]
    versions: list[str]


@pytest.fixture(scope="session")
def quickstart_template(tmp_path_factory) -> tuple[Path, QuickstartHome]:
    home = tmp_path_factory.mktemp("serve_template") / "home"
    settings = load_settings({"JOURNEY_HOME": str(home)})
    prepared = prepare_quickstart_home(settings, contacts=300, versions=2, training_rows=3000)
    return home, prepared


@pytest.fixture
def served_home(tmp_path, monkeypatch, quickstart_template) -> ServedHome:
    """A copy of the quickstart home as this test's JOURNEY_HOME."""
    template, prepared = quickstart_template
    home = tmp_path / "home"
    shutil.copytree(template, home)
    monkeypatch.setenv("JOURNEY_HOME", str(home))
    monkeypatch.delenv("JOURNEY_PROFILE", raising=False)
    monkeypatch.delenv("JOURNEY_API_KEYS", raising=False)
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, which load_settings honours: without
    # this, a home would keep talking to the MLflow store of the previous one.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("JOURNEY_MLFLOW_URI", raising=False)
    return ServedHome(load_settings(), prepared.contact_ids, prepared.versions)


def wait_until(predicate, timeout_s: float = 30.0, interval_s: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` passed; returns its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())
