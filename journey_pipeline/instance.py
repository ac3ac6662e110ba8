"""The Dagster instance the CLI runs against: the same one `make ui` shows.

The local profile keeps run and event storage in SQLite under ``DAGSTER_HOME`` (default
``JOURNEY_HOME/dagster``). The production profile uses ``dagster.production.yaml``: storage
on PostgreSQL, every connection value from the environment (:data:`DAGSTER_PG_VARIABLES`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import dagster as dg

from journey_pipeline.settings import Settings, SettingsError

REPO_ROOT = Path(__file__).resolve().parents[1]

# The variables dagster.production.yaml reads, and what each one is.
DAGSTER_PG_VARIABLES = {
    "JOURNEY_PG_HOST": "PostgreSQL host of the Dagster instance",
    "JOURNEY_PG_PORT": "its port, e.g. 5432",
    "JOURNEY_PG_USER": "its user",
    "JOURNEY_PG_PASSWORD": "its password (may be empty for trust authentication)",
    "JOURNEY_DAGSTER_DB": (
        "the database of Dagster's run, event-log and schedule storage (its own database: "
        "Dagster's tables must not share one with MLflow's)"
    ),
}


def dagster_home(settings: Settings) -> Path:
    """``DAGSTER_HOME`` if set, else ``JOURNEY_HOME/dagster`` (what `make ui` uses too)."""
    configured = os.environ.get("DAGSTER_HOME")
    return Path(configured) if configured else settings.home / "dagster"


def missing_dagster_variables(env: Mapping[str, str]) -> list[str]:
    """The variables of :data:`DAGSTER_PG_VARIABLES` that ``env`` does not set (an empty
    password counts as set)."""
    return [
        name
        for name in DAGSTER_PG_VARIABLES
        if name not in env or (name != "JOURNEY_PG_PASSWORD" and not env[name].strip())
    ]


def dagster_instance(settings: Settings) -> dg.DagsterInstance:
    """A persistent instance whose runs show in the UI, configured by the top-level
    dagster.yaml (dagster.production.yaml in the production profile).

    The repository's file is copied into ``DAGSTER_HOME`` when that has none. Under the
    production profile a missing connection variable, or a ``DAGSTER_HOME`` whose
    dagster.yaml keeps runs anywhere but PostgreSQL, is a :class:`SettingsError` that says
    what to change.
    """
    home = dagster_home(settings)
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    source = REPO_ROOT / ("dagster.production.yaml" if settings.is_production else "dagster.yaml")
    if settings.is_production:
        missing = missing_dagster_variables(os.environ)
        if missing:
            raise SettingsError(
                "the production Dagster instance (dagster.production.yaml) needs "
                + "; ".join(f"{name}: {DAGSTER_PG_VARIABLES[name]}" for name in missing)
            )
        if config.exists() and "postgres" not in config.read_text():
            raise SettingsError(
                f"{config} keeps Dagster runs in SQLite, but the production profile stores "
                f"them on PostgreSQL: point DAGSTER_HOME at a new directory, or replace that "
                f"file with {source}"
            )
    if not config.exists() and source.exists():
        shutil.copyfile(source, config)
    os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.get()
