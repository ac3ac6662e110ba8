"""The DuckDB warehouse: connections that wait for the single writer, and the core tables.

DuckDB allows one writing process per database file. Writers here open the file, do their
work and close it; a second process that finds the file locked waits with backoff instead of
failing the run (locally Dagster also runs writers in one process; see dagster.yaml pools).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb

# Tables owned by the observe stage. Other stages create theirs in their own modules.
CORE_DDL = """
CREATE SCHEMA IF NOT EXISTS raw;
CREATE SCHEMA IF NOT EXISTS ops;
CREATE TABLE IF NOT EXISTS raw.events (
    event_id        VARCHAR PRIMARY KEY,
    occurred_at     TIMESTAMP NOT NULL,      -- UTC, zone dropped after normalising
    event_date      DATE NOT NULL,           -- date of occurred_at (UTC)
    event_type      VARCHAR NOT NULL,
    source          VARCHAR NOT NULL,
    contact_id      VARCHAR NOT NULL,
    lifecycle_stage VARCHAR,                 -- contact.* events
    status          VARCHAR,                 -- contact.* events
    email_token     VARCHAR,                 -- HMAC-SHA256 of the normalised email
    phone_token     VARCHAR,                 -- HMAC-SHA256 of the normalised phone
    amount          DOUBLE,                  -- payment.succeeded
    currency        VARCHAR,                 -- payment.succeeded
    order_id        VARCHAR,                 -- payment.succeeded
    decision_id     VARCHAR,                 -- offer.* events
    product_id      VARCHAR,                 -- product.viewed, cart.abandoned
    payload         JSON,                    -- the tokenised payload, no raw PII
    batch_id        VARCHAR NOT NULL,
    ingested_at     TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS ops.dead_letter (
    batch_id        VARCHAR NOT NULL,
    source          VARCHAR NOT NULL,        -- 'file' or 'kafka'
    position        VARCHAR NOT NULL,        -- 'path:line' or 'topic/partition/offset'
    raw             BLOB,                    -- the record's bytes, as received
    reason          VARCHAR NOT NULL,
    dead_lettered_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS ops.ingest_batches (
    batch_id        VARCHAR PRIMARY KEY,
    source          VARCHAR NOT NULL,
    description     VARCHAR,
    received        BIGINT NOT NULL,
    accepted        BIGINT NOT NULL,
    duplicates      BIGINT NOT NULL,
    dead_lettered   BIGINT NOT NULL,
    started_at      TIMESTAMP NOT NULL,
    finished_at     TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS ops.stage_timings (
    stage           VARCHAR NOT NULL,        -- e.g. ingest, decide
    partition_key   VARCHAR,
    recorded_at     TIMESTAMP NOT NULL,
    seconds         DOUBLE NOT NULL,         -- wall time of the stage's work
    items           BIGINT NOT NULL,         -- events ingested, decisions taken, ...
    lag_seconds     DOUBLE                   -- ingest: landing file written -> ingested
);
CREATE TABLE IF NOT EXISTS ops.erasures (
    contact_id      VARCHAR PRIMARY KEY,
    erased_at       TIMESTAMP NOT NULL,      -- occurred_at of the contact.deleted event
    event_id        VARCHAR NOT NULL
);
"""

_LOCK_MARKERS = ("Could not set lock", "Conflicting lock", "database is locked")


def _is_lock_error(exc: BaseException) -> bool:
    return any(marker in str(exc) for marker in _LOCK_MARKERS)


def connect(
    path: str | Path,
    *,
    read_only: bool = False,
    timeout_s: float = 300.0,
) -> duckdb.DuckDBPyConnection:
    """Open the warehouse, waiting (with jittered backoff) while another process holds it."""
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.exists():
        raise FileNotFoundError(
            f"warehouse {path} does not exist yet: run ingestion first (`journey ingest` or "
            "the observe assets)"
        )
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            if not _is_lock_error(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)


@contextlib.contextmanager
def warehouse(path: str | Path, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """Context manager around :func:`connect` that always closes the connection."""
    con = connect(path, read_only=read_only)
    try:
        yield con
    finally:
        con.close()


def ensure_core_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(CORE_DDL)


def record_timing(
    con: duckdb.DuckDBPyConnection,
    stage: str,
    partition_key: str | None,
    seconds: float,
    items: int,
    lag_seconds: float | None = None,
) -> None:
    """Append one measured stage run to ``ops.stage_timings`` (the scoreboard's SLOs and cost
    figures come from these measurements, never from constants)."""
    from datetime import UTC, datetime

    ensure_core_schema(con)
    con.execute(
        "INSERT INTO ops.stage_timings VALUES (?, ?, ?, ?, ?, ?)",
        [stage, partition_key, datetime.now(UTC).replace(tzinfo=None), seconds, items, lag_seconds],
    )
