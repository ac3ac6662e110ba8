"""The decision log: every decision the policy takes, live or shadow, in DuckDB.

``decide.decision_log`` is the contract between decide (which writes it), act (which turns
live offers into CRM tasks, keyed on ``decision_id``) and learn (which joins outcomes to it).
``decision_id`` is deterministic (uuid5 of contact, trigger event and policy version), so a
re-run reproduces the same ids and appending them again inserts nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime

import duckdb
import pandas as pd

# Fixed namespace: changing it would change every decision id and break idempotency.
DECISION_NAMESPACE = uuid.UUID("5f0c7f1e-6a53-4d36-9d0e-8a7e2b0c4a11")

DECISION_LOG_TABLE = "decide.decision_log"

DECISION_LOG_DDL = """
CREATE SCHEMA IF NOT EXISTS decide;
CREATE TABLE IF NOT EXISTS decide.decision_log (
    decision_id      VARCHAR PRIMARY KEY,  -- uuid5(contact_id|trigger_event_id|policy_version)
    contact_id       VARCHAR NOT NULL,
    decided_at       TIMESTAMP NOT NULL,   -- UTC
    decision_date    DATE NOT NULL,        -- date of decided_at (UTC)
    trigger_event_id VARCHAR NOT NULL,
    trigger_type     VARCHAR,              -- e.g. 'cart.abandoned', 'lifecycle.opportunity'
    policy_version   VARCHAR NOT NULL,
    model_version    VARCHAR,              -- NULL under cold start
    mode             VARCHAR NOT NULL CHECK (mode IN ('live', 'shadow')),
    action           VARCHAR NOT NULL,
    propensity       DOUBLE NOT NULL CHECK (propensity > 0 AND propensity <= 1),
    holdout          BOOLEAN NOT NULL,
    expected_rewards JSON,                 -- {action: expected margin}
    explanation      JSON,                 -- [{feature, contribution}], top 3
    rules_applied    JSON,                 -- [rule names]
    fallback_reason  VARCHAR               -- NULL unless a fallback was used
);
"""

DECISION_LOG_COLUMNS: list[str] = [
    "decision_id",
    "contact_id",
    "decided_at",
    "decision_date",
    "trigger_event_id",
    "trigger_type",
    "policy_version",
    "model_version",
    "mode",
    "action",
    "propensity",
    "holdout",
    "expected_rewards",
    "explanation",
    "rules_applied",
    "fallback_reason",
]


def utc_naive(moment: datetime | str | pd.Timestamp) -> datetime:
    """A moment as a naive UTC datetime (the warehouse's TIMESTAMP convention)."""
    stamp = pd.Timestamp(moment)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return stamp.to_pydatetime()


def decision_ids(
    contact_ids: Iterable[str], trigger_event_ids: Iterable[str], policy_version: str
) -> list[str]:
    """Deterministic decision ids: uuid5 of ``contact_id|trigger_event_id|policy_version``."""
    return [
        str(uuid.uuid5(DECISION_NAMESPACE, f"{contact}|{trigger}|{policy_version}"))
        for contact, trigger in zip(contact_ids, trigger_event_ids, strict=True)
    ]


def ensure_decision_log(con: duckdb.DuckDBPyConnection) -> None:
    """Create the ``decide`` schema and the decision log table if they do not exist."""
    con.execute(DECISION_LOG_DDL)


def append_decisions(con: duckdb.DuckDBPyConnection, decisions: pd.DataFrame) -> int:
    """Append decisions (the decision-log columns) and return how many rows were new.

    Idempotent on ``decision_id``: ids already in the log, or repeated within ``decisions``,
    are skipped, so re-running a scoring batch inserts nothing.
    """
    ensure_decision_log(con)
    missing = [c for c in DECISION_LOG_COLUMNS if c not in decisions.columns]
    if missing:
        raise ValueError(f"decisions lack the decision-log columns {missing}")
    if decisions.empty:
        return 0
    batch = decisions[DECISION_LOG_COLUMNS].drop_duplicates("decision_id", keep="first")
    con.register("decision_batch", batch)
    try:
        con.execute("BEGIN TRANSACTION")
        before = con.execute(f"SELECT count(*) FROM {DECISION_LOG_TABLE}").fetchone()[0]
        columns = ", ".join(DECISION_LOG_COLUMNS)
        con.execute(
            f"""
            INSERT INTO {DECISION_LOG_TABLE} ({columns})
            SELECT decision_id, contact_id, CAST(decided_at AS TIMESTAMP),
                   CAST(decision_date AS DATE), trigger_event_id, trigger_type, policy_version,
                   model_version, mode, action, propensity, holdout,
                   CAST(expected_rewards AS JSON), CAST(explanation AS JSON),
                   CAST(rules_applied AS JSON), fallback_reason
            FROM decision_batch b
            WHERE NOT EXISTS (
                SELECT 1 FROM {DECISION_LOG_TABLE} l WHERE l.decision_id = b.decision_id
            )
            """
        )
        after = con.execute(f"SELECT count(*) FROM {DECISION_LOG_TABLE}").fetchone()[0]
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    finally:
        con.unregister("decision_batch")
    return int(after - before)


def read_decisions(
    con: duckdb.DuckDBPyConnection,
    *,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    mode: str | None = None,
    contact_ids: Sequence[str] | None = None,
    policy_version: str | None = None,
) -> pd.DataFrame:
    """Decisions with ``start <= decided_at < end`` (UTC, bounds optional), optionally only
    one mode, some contacts or one policy version, ordered by decided_at then decision_id.

    JSON columns come back as strings. An absent log reads as an empty frame.
    """
    ensure_decision_log(con)
    where, params = [], []
    if start is not None:
        where.append("decided_at >= CAST(? AS TIMESTAMP)")
        params.append(utc_naive(start))
    if end is not None:
        where.append("decided_at < CAST(? AS TIMESTAMP)")
        params.append(utc_naive(end))
    if mode is not None:
        where.append("mode = ?")
        params.append(mode)
    if policy_version is not None:
        where.append("policy_version = ?")
        params.append(policy_version)
    if contact_ids is not None:
        where.append("list_contains(?, contact_id)")
        params.append(list(contact_ids))
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    columns = ", ".join(
        f"CAST({c} AS VARCHAR) AS {c}"
        if c in ("expected_rewards", "explanation", "rules_applied")
        else c
        for c in DECISION_LOG_COLUMNS
    )
    return con.execute(
        f"SELECT {columns} FROM {DECISION_LOG_TABLE} {clause} ORDER BY decided_at, decision_id",
        params,
    ).df()


def last_offer_times(
    con: duckdb.DuckDBPyConnection, *, before: datetime | str | None = None
) -> pd.Series:
    """Latest live offer (action != 'no_offer') per contact, optionally only those decided
    before ``before``: Series contact_id -> decided_at (UTC, naive). Feeds the frequency cap
    with offers made since the last feature cutoff."""
    ensure_decision_log(con)
    clause, params = "", []
    if before is not None:
        clause = "AND decided_at < CAST(? AS TIMESTAMP)"
        params.append(utc_naive(before))
    frame = con.execute(
        f"""
        SELECT contact_id, max(decided_at) AS last_offer_at FROM {DECISION_LOG_TABLE}
        WHERE mode = 'live' AND action <> 'no_offer' {clause}
        GROUP BY contact_id
        """,
        params,
    ).df()
    return frame.set_index("contact_id")["last_offer_at"]
