"""Outcomes: what happened after each live decision, built in the warehouse (DuckDB SQL).

For every live decision (``decide.decision_log``, ``mode = 'live'``, holdout included):

- attribution window: ``(decided_at, decided_at + window_days]``, ending early at the
  contact's next live decision (last touch: each payment is credited to one decision, the
  latest before it); a payment at the very instant of the decision cannot have been caused
  by it;
- ``revenue``: sum of the contact's ``payment.succeeded`` amounts in the window, each order
  counted once (``order_id``, or the event id without one); ``converted``: any such payment;
- ``delivered`` / ``opened`` / ``clicked``: ``offer.*`` events carrying the decision's id within
  ``[decided_at, decided_at + window_days]`` (they name their decision, so a later one does
  not end them);
- ``reward = revenue - fixed_cost`` of the action (:mod:`journey_pipeline.actions`); holdout
  decisions are never delivered, so they carry no cost;
- ``lifecycle_stage``: the contact's stage at the decision (latest ``contact.*`` event at or
  before ``decided_at``), the cohort of the experiment analysis;
- ``matured``: whether ``window_days`` have passed by ``as_of`` (default: the latest event
  time in ``raw.events``, the warehouse's own clock, so simulated and replayed worlds behave
  alike); a window a later decision ended early matures no sooner, so the newest matured
  days are not biased towards contacts who triggered again.

Outcomes are rebuilt per range of decision dates: :func:`build_outcomes` deletes and rewrites
the decisions of ``[start_date, end_date]``, so a late payment updates an earlier day when that
day's partition is materialised again. Offer events that cannot be credited (unknown or missing
decision id, a shadow decision, before the decision, after the window) are not dropped: they
are written to ``learn.unmatched_outcome_events`` and counted in the returned report.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import duckdb
import pandas as pd

from journey_pipeline.actions import ACTIONS

DEFAULT_WINDOW_DAYS = 7

OUTCOMES_DDL = """
CREATE SCHEMA IF NOT EXISTS learn;
CREATE TABLE IF NOT EXISTS learn.outcomes (
    decision_id     VARCHAR PRIMARY KEY,
    contact_id      VARCHAR NOT NULL,
    decided_at      TIMESTAMP NOT NULL,
    decision_date   DATE NOT NULL,
    trigger_type    VARCHAR,
    policy_version  VARCHAR,
    model_version   VARCHAR,
    action          VARCHAR NOT NULL,
    propensity      DOUBLE NOT NULL,
    holdout         BOOLEAN NOT NULL,
    expected_reward DOUBLE,                  -- the model's expected margin of the chosen action
    lifecycle_stage VARCHAR,                 -- at decided_at
    window_days     INTEGER NOT NULL,
    window_end      TIMESTAMP NOT NULL,      -- early at the next live decision
    payments        INTEGER NOT NULL,
    revenue         DOUBLE NOT NULL,
    converted       BOOLEAN NOT NULL,
    delivered       BOOLEAN NOT NULL,
    opened          BOOLEAN NOT NULL,
    clicked         BOOLEAN NOT NULL,
    fixed_cost      DOUBLE,                  -- NULL for an action missing from the catalogue
    reward          DOUBLE,                  -- revenue - fixed_cost; NULL with fixed_cost
    matured         BOOLEAN NOT NULL,        -- window_days passed by as_of
    as_of           TIMESTAMP NOT NULL,
    built_at        TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS learn.unmatched_outcome_events (
    event_id        VARCHAR NOT NULL,
    event_type      VARCHAR NOT NULL,
    occurred_at     TIMESTAMP NOT NULL,
    contact_id      VARCHAR,
    decision_id     VARCHAR,
    reason          VARCHAR NOT NULL,        -- see UNMATCHED_REASONS
    partition_date  DATE NOT NULL,           -- the decision's date, else the event's date
    built_at        TIMESTAMP NOT NULL
);
"""

UNMATCHED_REASONS = (
    "missing_decision_id",
    "unknown_decision",
    "not_live_decision",
    "before_decision",
    "after_window",
)

_OUTCOMES_SQL = """
WITH costs(action, fixed_cost) AS (SELECT * FROM (VALUES {cost_rows})),
next_decisions AS (
    -- the contact's next live decision: a payment after it belongs to that decision's window
    SELECT decision_id,
           lead(decided_at) OVER (
               PARTITION BY contact_id ORDER BY decided_at, decision_id) AS next_decided_at
    FROM decide.decision_log
    WHERE mode = 'live'
      AND contact_id IN (
          SELECT contact_id FROM decide.decision_log
          WHERE mode = 'live' AND decision_date BETWEEN $start_date AND $end_date)
),
decisions AS (
    SELECT d.*,
           d.decided_at + to_days($window_days) AS offer_window_end,
           -- LEAST skips a NULL: without a next decision the window runs its full length
           LEAST(d.decided_at + to_days($window_days), n.next_decided_at) AS window_end
    FROM decide.decision_log d
    JOIN next_decisions n USING (decision_id)
    WHERE d.mode = 'live' AND d.decision_date BETWEEN $start_date AND $end_date
),
stages AS (
    SELECT contact_id, occurred_at, lifecycle_stage
    FROM raw.events
    WHERE lifecycle_stage IS NOT NULL
      AND contact_id IN (SELECT contact_id FROM decisions)
),
staged AS (
    SELECT d.*, s.lifecycle_stage
    FROM decisions d
    ASOF LEFT JOIN stages s ON s.contact_id = d.contact_id AND s.occurred_at <= d.decided_at
),
orders AS (
    -- one row per order: a payment replayed under a new event id must not count twice
    SELECT contact_id, occurred_at, amount
    FROM raw.events
    WHERE event_type = 'payment.succeeded'
      AND contact_id IN (SELECT contact_id FROM decisions)
    QUALIFY row_number() OVER (
        PARTITION BY COALESCE(order_id, event_id) ORDER BY occurred_at, event_id) = 1
),
attributed AS (
    SELECT d.decision_id, count(*) AS payments, COALESCE(sum(o.amount), 0) AS revenue
    FROM decisions d
    JOIN orders o
      ON o.contact_id = d.contact_id
     AND o.occurred_at > d.decided_at
     AND o.occurred_at <= d.window_end
    GROUP BY d.decision_id
),
engagement AS (
    SELECT d.decision_id,
           bool_or(e.event_type = 'offer.delivered') AS delivered,
           bool_or(e.event_type = 'offer.opened') AS opened,
           bool_or(e.event_type = 'offer.clicked') AS clicked
    FROM decisions d
    JOIN raw.events e
      ON e.decision_id = d.decision_id
     AND e.event_type LIKE 'offer.%'
     AND e.occurred_at >= d.decided_at
     AND e.occurred_at <= d.offer_window_end
    GROUP BY d.decision_id
)
SELECT
    s.decision_id, s.contact_id, s.decided_at, s.decision_date, s.trigger_type,
    s.policy_version, s.model_version, s.action, s.propensity, s.holdout,
    TRY_CAST(json_extract_string(s.expected_rewards, '$."' || s.action || '"') AS DOUBLE)
        AS expected_reward,
    s.lifecycle_stage,
    $window_days AS window_days,
    s.window_end,
    COALESCE(a.payments, 0) AS payments,
    COALESCE(a.revenue, 0.0) AS revenue,
    COALESCE(a.payments, 0) > 0 AS converted,
    COALESCE(g.delivered, false) AS delivered,
    COALESCE(g.opened, false) AS opened,
    COALESCE(g.clicked, false) AS clicked,
    CASE WHEN s.holdout THEN 0.0 ELSE c.fixed_cost END AS fixed_cost,
    COALESCE(a.revenue, 0.0) - (CASE WHEN s.holdout THEN 0.0 ELSE c.fixed_cost END) AS reward,
    s.offer_window_end <= $as_of AS matured,
    $as_of AS as_of,
    $built_at AS built_at
FROM staged s
LEFT JOIN attributed a ON a.decision_id = s.decision_id
LEFT JOIN engagement g ON g.decision_id = s.decision_id
LEFT JOIN costs c ON c.action = s.action
"""

_UNMATCHED_SQL = """
SELECT
    e.event_id, e.event_type, e.occurred_at, e.contact_id, e.decision_id,
    CASE
        WHEN e.decision_id IS NULL THEN 'missing_decision_id'
        WHEN d.decision_id IS NULL THEN 'unknown_decision'
        WHEN d.mode <> 'live' THEN 'not_live_decision'
        WHEN e.occurred_at < d.decided_at THEN 'before_decision'
        ELSE 'after_window'
    END AS reason,
    COALESCE(d.decision_date, e.event_date) AS partition_date,
    $built_at AS built_at
FROM raw.events e
LEFT JOIN decide.decision_log d ON d.decision_id = e.decision_id
WHERE e.event_type LIKE 'offer.%'
  AND COALESCE(d.decision_date, e.event_date) BETWEEN $start_date AND $end_date
  AND (d.decision_id IS NULL
       OR d.mode <> 'live'
       OR e.occurred_at < d.decided_at
       OR e.occurred_at > d.decided_at + to_days($window_days))
"""

_UNATTRIBUTED_PAYMENTS_SQL = """
SELECT count(*)
FROM raw.events p
WHERE p.event_type = 'payment.succeeded'
  AND p.event_date BETWEEN $start_date AND $end_date
  AND NOT EXISTS (
      SELECT 1 FROM decide.decision_log d
      WHERE d.mode = 'live'
        AND d.contact_id = p.contact_id
        AND p.occurred_at > d.decided_at
        AND p.occurred_at <= d.decided_at + to_days($window_days))
"""


@dataclass(frozen=True)
class OutcomeBuildReport:
    """What :func:`build_outcomes` wrote and what it could not credit.

    Counts of decisions (total, matured, immature), summed revenue and reward, offer events
    that could not be credited by reason (``unmatched_by_reason``, rows in ``unmatched``),
    payments of the period inside no live decision's window (organic purchases, for context)
    and decisions whose action is missing from the catalogue (their reward is NULL).
    """

    start_date: dt.date
    end_date: dt.date
    window_days: int
    as_of: dt.datetime
    decisions: int
    matured: int
    immature: int
    revenue: float
    reward: float
    unattributed_payments: int
    unknown_actions: int
    unmatched_by_reason: dict[str, int] = field(default_factory=dict)
    unmatched: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def unknown_decision_events(self) -> int:
        """Offer events whose decision id is missing or not in the decision log."""
        return self.unmatched_by_reason.get("unknown_decision", 0) + self.unmatched_by_reason.get(
            "missing_decision_id", 0
        )

    @property
    def outside_window_events(self) -> int:
        """Offer events of known live decisions that fall outside the attribution window."""
        return self.unmatched_by_reason.get("before_decision", 0) + self.unmatched_by_reason.get(
            "after_window", 0
        )

    def as_metadata(self) -> dict[str, float | int | str]:
        """Flat figures for materialisation metadata."""
        return {
            "start_date": self.start_date.isoformat(),
            "end_date": self.end_date.isoformat(),
            "window_days": self.window_days,
            "as_of": self.as_of.isoformat(),
            "decisions": self.decisions,
            "matured": self.matured,
            "immature": self.immature,
            "revenue": self.revenue,
            "reward": self.reward,
            "unattributed_payments": self.unattributed_payments,
            "unknown_actions": self.unknown_actions,
            "unknown_decision_events": self.unknown_decision_events,
            "outside_window_events": self.outside_window_events,
            **{
                f"unmatched_{reason}": self.unmatched_by_reason.get(reason, 0)
                for reason in UNMATCHED_REASONS
            },
        }


def ensure_outcomes_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the ``learn`` schema and its outcome tables if they do not exist."""
    con.execute(OUTCOMES_DDL)


def _require_tables(con: duckdb.DuckDBPyConnection) -> None:
    present = {
        f"{schema}.{name}"
        for schema, name in con.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
        ).fetchall()
    }
    missing = [t for t in ("decide.decision_log", "raw.events") if t not in present]
    if missing:
        raise LookupError(
            f"outcomes need {', '.join(missing)} in the warehouse: run ingestion (raw.events) "
            "and the decide stage (decide.decision_log) first"
        )


def _to_date(value: str | dt.date) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(value)


def build_outcomes(
    con: duckdb.DuckDBPyConnection,
    start_date: str | dt.date,
    end_date: str | dt.date,
    window_days: int = DEFAULT_WINDOW_DAYS,
    *,
    as_of: dt.datetime | None = None,
) -> OutcomeBuildReport:
    """Rewrite ``learn.outcomes`` for the live decisions dated ``start_date..end_date``.

    Inputs: an open warehouse connection (with ``raw.events`` and ``decide.decision_log``),
    the inclusive decision-date range, the attribution window in days and ``as_of`` (naive UTC;
    default the latest ``occurred_at`` in ``raw.events``) that decides maturity. The rewrite of
    outcomes and unmatched events for the range is one transaction. Returns an
    :class:`OutcomeBuildReport`.
    """
    start, end = _to_date(start_date), _to_date(end_date)
    if end < start:
        raise ValueError(f"end_date {end} is before start_date {start}")
    if int(window_days) != window_days or window_days <= 0:
        raise ValueError(
            f"window_days must be a positive whole number of days, got {window_days!r}"
        )
    window_days = int(window_days)
    _require_tables(con)
    ensure_outcomes_schema(con)
    if as_of is None:
        latest = con.execute("SELECT max(occurred_at) FROM raw.events").fetchone()[0]
        as_of = latest if latest is not None else dt.datetime(start.year, start.month, start.day)
    built_at = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    params = {
        "start_date": start,
        "end_date": end,
        "window_days": window_days,
        "as_of": as_of,
        "built_at": built_at,
    }
    cost_rows = ", ".join(
        "('{}', {!r})".format(name.replace("'", "''"), float(action.fixed_cost))
        for name, action in ACTIONS.items()
    )
    outcomes_sql = _OUTCOMES_SQL.format(cost_rows=cost_rows)
    unmatched_params = {k: params[k] for k in ("start_date", "end_date", "window_days", "built_at")}

    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            "DELETE FROM learn.outcomes WHERE decision_date BETWEEN $start_date AND $end_date",
            {"start_date": start, "end_date": end},
        )
        con.execute(f"INSERT INTO learn.outcomes BY NAME ({outcomes_sql})", params)
        con.execute(
            "DELETE FROM learn.unmatched_outcome_events "
            "WHERE partition_date BETWEEN $start_date AND $end_date",
            {"start_date": start, "end_date": end},
        )
        con.execute(
            f"INSERT INTO learn.unmatched_outcome_events BY NAME ({_UNMATCHED_SQL})",
            unmatched_params,
        )
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise

    totals = con.execute(
        """
        SELECT count(*), count(*) FILTER (WHERE matured), COALESCE(sum(revenue), 0),
               COALESCE(sum(reward), 0), count(*) FILTER (WHERE fixed_cost IS NULL)
        FROM learn.outcomes WHERE decision_date BETWEEN $start_date AND $end_date
        """,
        {"start_date": start, "end_date": end},
    ).fetchone()
    unmatched = con.execute(
        "SELECT event_id, event_type, occurred_at, contact_id, decision_id, reason, "
        "partition_date FROM learn.unmatched_outcome_events "
        "WHERE partition_date BETWEEN $start_date AND $end_date ORDER BY occurred_at, event_id",
        {"start_date": start, "end_date": end},
    ).df()
    unattributed = con.execute(
        _UNATTRIBUTED_PAYMENTS_SQL,
        {"start_date": start, "end_date": end, "window_days": window_days},
    ).fetchone()[0]
    decisions, matured, revenue, reward, unknown_actions = totals
    return OutcomeBuildReport(
        start_date=start,
        end_date=end,
        window_days=window_days,
        as_of=as_of,
        decisions=int(decisions),
        matured=int(matured),
        immature=int(decisions - matured),
        revenue=float(revenue),
        reward=float(reward),
        unattributed_payments=int(unattributed),
        unknown_actions=int(unknown_actions),
        unmatched_by_reason={k: int(v) for k, v in unmatched["reason"].value_counts().items()},
        unmatched=unmatched,
    )


def load_outcomes(
    con: duckdb.DuckDBPyConnection,
    start_date: str | dt.date | None = None,
    end_date: str | dt.date | None = None,
) -> pd.DataFrame:
    """Read ``learn.outcomes`` (optionally a decision-date range) as the frame that
    :func:`journey_pipeline.learn.experiment.analyse` takes."""
    clauses, params = [], {}
    if start_date is not None:
        clauses.append("decision_date >= $start_date")
        params["start_date"] = _to_date(start_date)
    if end_date is not None:
        clauses.append("decision_date <= $end_date")
        params["end_date"] = _to_date(end_date)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    return con.execute(
        f"SELECT * FROM learn.outcomes {where} ORDER BY decided_at, decision_id", params
    ).df()
