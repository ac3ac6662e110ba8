"""The Dagster instance the CLI runs against: the same one `make ui` shows."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg

from journey_pipeline.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]


def dagster_home(settings: Settings) -> Path:
    """``DAGSTER_HOME`` if set, else ``JOURNEY_HOME/dagster`` (what `make ui` uses too)."""
    configured = os.environ.get("DAGSTER_HOME")
    return Path(configured) if configured else settings.home / "dagster"


def dagster_instance(settings: Settings) -> dg.DagsterInstance:
    """A persistent instance whose runs show in the UI, configured by the top-level
    dagster.yaml (dagster.production.yaml in the production profile)."""
    home = dagster_home(settings)
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    source = REPO_ROOT / ("dagster.production.yaml" if settings.is_production else "dagster.yaml")
    if not config.exists() and source.exists():
        shutil.copyfile(source, config)
    os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.get()
