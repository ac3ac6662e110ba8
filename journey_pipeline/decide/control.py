"""Human and automatic control of the live policy: pause/resume autonomy, promote, roll back.

Every change records who made it and why: autonomy in ``decide.autonomy`` (warehouse),
promotions and rollbacks as the champion history of the registered model (MLflow), and all of
them in ``decide.control_events`` so one table tells the story.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import duckdb

from journey_pipeline.decide import registry
from journey_pipeline.decide.policy import autonomy_enabled, set_autonomy
from journey_pipeline.settings import Settings
from journey_pipeline.warehouse import warehouse

CONTROL_DDL = """
CREATE SCHEMA IF NOT EXISTS decide;
CREATE TABLE IF NOT EXISTS decide.control_events (
    happened_at TIMESTAMP NOT NULL,
    action      VARCHAR NOT NULL,   -- pause | resume | promote | rollback
    version     VARCHAR,            -- champion version after the change
    previous    VARCHAR,            -- champion version before the change
    who         VARCHAR NOT NULL,
    why         VARCHAR NOT NULL
);
"""


def _record(
    con: duckdb.DuckDBPyConnection,
    action: str,
    who: str,
    why: str,
    version: str | None = None,
    previous: str | None = None,
) -> dict[str, Any]:
    con.execute(CONTROL_DDL)
    at = datetime.now(UTC).replace(tzinfo=None)
    con.execute(
        "INSERT INTO decide.control_events VALUES (?, ?, ?, ?, ?, ?)",
        [at, action, version, previous, who, why],
    )
    return {
        "at": at.isoformat(timespec="seconds"),
        "action": action,
        "version": version,
        "previous": previous,
        "who": who,
        "why": why,
    }


def _require(who: str, why: str) -> None:
    if not who.strip() or not why.strip():
        raise ValueError("a control action needs who takes it and why")


def pause_autonomy(settings: Settings, who: str, why: str) -> dict[str, Any]:
    """Kill switch on: every contact gets the default action until resumed."""
    _require(who, why)
    with warehouse(settings.warehouse_path) as con:
        set_autonomy(con, False, who, why)
        return _record(con, "pause", who, why)


def resume_autonomy(settings: Settings, who: str, why: str) -> dict[str, Any]:
    _require(who, why)
    with warehouse(settings.warehouse_path) as con:
        set_autonomy(con, True, who, why)
        return _record(con, "resume", who, why)


def promote(settings: Settings, version: str, who: str, why: str) -> dict[str, Any]:
    """Make ``version`` the champion by hand (no gate: the human takes responsibility)."""
    _require(who, why)
    change = registry.promote(version, who, why, settings)
    with warehouse(settings.warehouse_path) as con:
        return _record(con, "promote", who, why, change.version, change.previous)


def rollback(settings: Settings, who: str, why: str) -> dict[str, Any]:
    """Champion back to the version it replaced; with no earlier version, pause autonomy."""
    _require(who, why)
    try:
        change = registry.rollback(who, why, settings)
    except ValueError as exc:
        with warehouse(settings.warehouse_path) as con:
            set_autonomy(con, False, who, f"{why} (no earlier champion: {exc})")
            return _record(con, "pause", who, f"{why} (no earlier champion to roll back to)")
    with warehouse(settings.warehouse_path) as con:
        return _record(con, "rollback", who, why, change.version, change.previous)


def control_state(settings: Settings) -> dict[str, Any]:
    """Autonomy, champion and challenger versions, and the last control events."""
    client = registry.configure_mlflow(settings)
    with warehouse(settings.warehouse_path) as con:
        con.execute(CONTROL_DDL)
        events = con.execute(
            "SELECT * FROM decide.control_events ORDER BY happened_at DESC LIMIT 10"
        ).df()
        enabled = autonomy_enabled(con)
    return {
        "autonomy": enabled,
        "champion": registry.alias_version(client, registry.CHAMPION),
        "challenger": registry.alias_version(client, registry.CHALLENGER),
        "recent_events": events.to_dict(orient="records"),
    }
