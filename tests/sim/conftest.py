"""Helpers for the simulator tests: read day files, insert tasks as the act stage would."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from journey_pipeline.sim.crm import LocalCrmStore


def read_events(path: Path) -> list[dict]:
    """Every line of a day file, decoded."""
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def insert_tasks(crm: LocalCrmStore, rows: list[tuple[str, str, str]], created_at: str) -> None:
    """Insert open tasks ``(decision_id, contact_id, action)`` the way the act stage does."""
    with crm.connection as con:
        con.executemany(
            "INSERT INTO tasks (decision_id, contact_id, action, body, status, created_at) "
            "VALUES (?, ?, ?, '{}', 'open', ?)",
            [(d, c, a, created_at) for d, c, a in rows],
        )


@pytest.fixture
def crm(tmp_path, journey_home) -> LocalCrmStore:
    store = LocalCrmStore(journey_home / "crm.db")
    yield store
    store.close()
