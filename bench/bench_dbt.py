"""Benchmark: `dbt build` of the feature marts against a plain DuckDB SQL script.

Generates a synthetic event history in ``raw.events`` (10,000,000 events; ``--quick``:
1,000,000) with a DuckDB SQL generator, then times, in the same run:

- ``dbt build`` of the feature marts over the full window (models, tests and the Parquet
  export), in a subprocess as Dagster runs it;
- the baseline: one plain DuckDB SQL script computing the same ``contact_features_daily``
  rows (DuckDB-specific SQL: RANGE frames over dates, ASOF joins, no dbt).

Both outputs are compared (row count and an order-independent checksum over every feature
column) and must be equal. Prints seconds, the dbt/baseline ratio (target <= 1.5) and rows;
returns them as a dict.

    python bench/bench_dbt.py [--quick] [--events N] [--home DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from journey_pipeline.features.contract import FEATURES, LIFECYCLE_STAGES  # noqa: E402
from journey_pipeline.warehouse import ensure_core_schema  # noqa: E402

DBT_PROJECT_DIR = ROOT / "dbt_project"
SIM_START = "2026-01-01"

# Share of the non-contact events by type: a browsing-heavy mix as CRMs see it.
EVENT_MIX = {
    "product.viewed": 0.72,
    "cart.abandoned": 0.10,
    "payment.succeeded": 0.06,
    "offer": 0.12,  # delivered, then opened (60%) and clicked (25%) of the deliveries
}
EVENTS_PER_OFFER = 1 + 0.60 + 0.25


def generate_events(
    con: duckdb.DuckDBPyConnection, n_events: int, *, days: int = 180, seed: int = 7
) -> dict:
    """Fill ``raw.events`` with about ``n_events`` synthetic events over ``days`` days.

    Deterministic for a seed (hash-based, no random()). Contacts (one per 200 events) are
    created during the first 60% of the period and move through the lifecycle; activity
    falls after creation. Returns the counts written by event type.
    """
    n_contacts = max(n_events // 200, 10)
    n_stage_changes = 2 * n_contacts
    n_activity = max(n_events - n_contacts - n_stage_changes, 0)
    n_offers = int(n_activity * EVENT_MIX["offer"] / EVENTS_PER_OFFER)
    n_plain = n_activity - int(n_offers * EVENTS_PER_OFFER)
    period_s = days * 86400
    stages = "['" + "','".join(LIFECYCLE_STAGES) + "']"
    u = f"(hash(i, {seed}, 'salt') % 1000003) / 1000003.0"  # uniform [0,1) per row i

    def uniform(tag: int) -> str:
        return u.replace("'salt'", str(tag))

    ensure_core_schema(con)
    con.execute("DELETE FROM raw.events")
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE sim_contacts AS
        SELECT i AS contact_no, 'C-' || i AS contact_id,
               TIMESTAMP '{SIM_START}' + to_seconds(
                   cast({uniform(1)} * {int(period_s * 0.6)} AS BIGINT)) AS created_at
        FROM range({n_contacts}) t(i)
        """
    )
    base_cols = (
        "event_id, occurred_at, event_date, event_type, source, contact_id, lifecycle_stage, "
        "status, amount, currency, order_id, decision_id, product_id, payload, batch_id, "
        "ingested_at"
    )
    # Contacts created as subscribers or leads.
    con.execute(
        f"""
        INSERT INTO raw.events ({base_cols})
        SELECT 'created-' || contact_no, created_at, cast(created_at AS DATE), 'contact.created',
               'sim', contact_id, {stages}[1 + floor({uniform(2).replace("i,", "contact_no,")} * 2)::INTEGER], 'active', NULL, NULL, NULL, NULL, NULL, NULL, 'bench', now()
        FROM sim_contacts
        """
    )
    # Lifecycle moves after creation.
    con.execute(
        f"""
        INSERT INTO raw.events ({base_cols})
        SELECT 'stage-' || i, ts, cast(ts AS DATE), 'contact.updated', 'sim', c.contact_id,
               {stages}[1 + floor({uniform(3)} * 7)::INTEGER], 'active',
               NULL, NULL, NULL, NULL, NULL, NULL, 'bench', now()
        FROM (
            SELECT i, c.contact_id, c.created_at + to_seconds(cast({uniform(4)} *
                   (epoch(TIMESTAMP '{SIM_START}' + INTERVAL {days} DAY) - epoch(c.created_at))
                   AS BIGINT)) AS ts
            FROM range({n_stage_changes}) t(i)
            JOIN sim_contacts c ON c.contact_no = i % {n_contacts}
        ) c
        """
    )
    activity_time = (
        f"c.created_at + to_seconds(cast({{u}} * (epoch(TIMESTAMP '{SIM_START}' + "
        f"INTERVAL {days} DAY) - epoch(c.created_at) - 1) AS BIGINT))"
    )
    plain_mix = {k: v for k, v in EVENT_MIX.items() if k != "offer"}
    total = sum(plain_mix.values())
    view_cut = plain_mix["product.viewed"] / total
    abandon_cut = view_cut + plain_mix["cart.abandoned"] / total
    con.execute(
        f"""
        INSERT INTO raw.events ({base_cols})
        SELECT 'act-' || i, ts, cast(ts AS DATE), event_type, 'sim', contact_id, NULL, NULL,
               CASE WHEN event_type = 'payment.succeeded'
                    THEN round(10 + {uniform(8)} * 190, 2) END,
               CASE WHEN event_type = 'payment.succeeded' THEN 'EUR' END,
               CASE WHEN event_type = 'payment.succeeded' THEN 'O-' || i END,
               NULL, 'P-' || (hash(i, 9) % 500), NULL, 'bench', now()
        FROM (
            SELECT i, c.contact_id, {activity_time.format(u=uniform(5))} AS ts,
                   CASE WHEN {uniform(6)} < {view_cut} THEN 'product.viewed'
                        WHEN {uniform(6)} < {abandon_cut} THEN 'cart.abandoned'
                        ELSE 'payment.succeeded' END AS event_type
            FROM range({n_plain}) t(i)
            JOIN sim_contacts c ON c.contact_no = hash(i, 7) % {n_contacts}
        ) a
        """
    )
    # Offers: delivered, then opened and clicked some hours later (or never).
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE sim_offers AS
        SELECT i AS offer_no, c.contact_id, 'D-' || i AS decision_id,
               {activity_time.format(u=uniform(10))} AS delivered_at,
               ['no_offer', 'offer_a', 'offer_b'][1 + floor({uniform(11)} * 3)::INTEGER]
                   AS action,
               {uniform(12)} AS response
        FROM range({n_offers}) t(i)
        JOIN sim_contacts c ON c.contact_no = hash(i, 13) % {n_contacts}
        """
    )
    for event_type, share, delay_hours in (
        ("offer.delivered", 1.0, 0),
        ("offer.opened", 0.60, 20),
        ("offer.clicked", 0.25, 30),
    ):
        con.execute(
            f"""
            INSERT INTO raw.events ({base_cols})
            SELECT '{event_type}-' || offer_no, ts, cast(ts AS DATE), '{event_type}', 'sim',
                   contact_id, NULL, NULL, NULL, NULL, NULL, decision_id, NULL,
                   json_object('action', action, 'decision_id', decision_id), 'bench', now()
            FROM (
                SELECT *, delivered_at + to_seconds(cast(response * {delay_hours} * 3600
                       AS BIGINT)) AS ts
                FROM sim_offers
                WHERE response < {share}
            )
            """
        )
    counts = dict(
        con.execute("SELECT event_type, count(*) FROM raw.events GROUP BY 1 ORDER BY 1").fetchall()
    )
    return {"contacts": n_contacts, "events": sum(counts.values()), "by_type": counts}


def erase_some_contacts(con: duckdb.DuckDBPyConnection, every: int = 200) -> int:
    """Record an erasure for one contact in ``every`` (as a contact.deleted would)."""
    con.execute("DELETE FROM ops.erasures")
    con.execute(
        f"""
        INSERT INTO ops.erasures
        SELECT contact_id, TIMESTAMP '{SIM_START}' + INTERVAL 100 DAY, 'erase-' || contact_id
        FROM (SELECT DISTINCT contact_id FROM raw.events)
        WHERE hash(contact_id) % {every} = 0
        """
    )
    return con.execute("SELECT count(*) FROM ops.erasures").fetchone()[0]


# The baseline: the same features as contact_features_daily, written directly for DuckDB with
# temp tables, RANGE-free dense windows, arg_max and an ASOF join; no dbt, no cross-db macros.
BASELINE_SQL = """
CREATE SCHEMA IF NOT EXISTS bench_baseline;

CREATE OR REPLACE TEMP TABLE ev AS
SELECT e.event_id, e.occurred_at, e.event_date, e.event_type, e.contact_id,
       lower(trim(e.lifecycle_stage)) AS lifecycle_stage, e.amount, e.decision_id,
       e.payload ->> 'action' AS action
FROM raw.events e
WHERE e.contact_id NOT IN (
    SELECT contact_id FROM ops.erasures
    UNION ALL SELECT contact_id FROM raw.events WHERE event_type = 'contact.deleted');

CREATE OR REPLACE TEMP TABLE bounds AS
SELECT min(event_date) + 1 AS first_day, max(event_date) + 1 AS last_day FROM raw.events;

CREATE OR REPLACE TEMP TABLE people AS
SELECT contact_id,
       coalesce(min(occurred_at) FILTER (event_type = 'contact.created'), min(occurred_at))
           AS created_at
FROM ev WHERE event_type IN ('contact.created', 'contact.updated')
GROUP BY contact_id;

CREATE OR REPLACE TEMP TABLE daily AS
SELECT contact_id, event_date AS day,
       count(*) FILTER (event_type = 'payment.succeeded') AS orders,
       coalesce(sum(amount) FILTER (event_type = 'payment.succeeded'), 0) AS spend,
       count(*) FILTER (event_type = 'product.viewed') AS views,
       count(*) FILTER (event_type = 'cart.abandoned') AS abandons,
       count(*) FILTER (event_type = 'offer.delivered') AS delivered,
       arg_max_null(action, (occurred_at, event_id)) FILTER (event_type = 'offer.delivered')
           AS day_action
FROM ev
WHERE event_type IN ('payment.succeeded', 'product.viewed', 'cart.abandoned', 'offer.delivered')
GROUP BY ALL;

CREATE OR REPLACE TEMP TABLE grid AS
SELECT p.contact_id, p.created_at, unnest(range(
           least(coalesce(f.first_day, p.created_at::DATE), p.created_at::DATE),
           (SELECT last_day FROM bounds) + 1, INTERVAL 1 DAY))::DATE AS day
FROM people p
LEFT JOIN (SELECT contact_id, min(day) AS first_day FROM daily GROUP BY 1) f USING (contact_id);

CREATE OR REPLACE TEMP TABLE windows AS
SELECT g.contact_id, g.created_at, g.day,
       sum(d.spend) OVER w30 AS spend_30d, sum(d.spend) OVER w90 AS spend_90d,
       sum(d.orders) OVER w30 AS orders_30d, sum(d.orders) OVER w90 AS orders_90d,
       sum(d.views) OVER (w ROWS BETWEEN 7 PRECEDING AND 1 PRECEDING) AS views_7d,
       sum(d.abandons) OVER (w ROWS BETWEEN 14 PRECEDING AND 1 PRECEDING) AS abandons_14d,
       max(CASE WHEN d.orders > 0 THEN d.day END) OVER wall AS last_purchase_day,
       -- wrapped, so that a delivery without an action still counts as the last one
       last_value(CASE WHEN d.delivered > 0 THEN struct_pack(a := d.day_action) END IGNORE NULLS)
           OVER wall AS last_delivery,
       max(CASE WHEN d.delivered > 0 THEN d.day END) OVER wall AS last_offer_day
FROM grid g LEFT JOIN daily d ON d.contact_id = g.contact_id AND d.day = g.day
WINDOW w AS (PARTITION BY g.contact_id ORDER BY g.day),
       w30 AS (w ROWS BETWEEN 30 PRECEDING AND 1 PRECEDING),
       w90 AS (w ROWS BETWEEN 90 PRECEDING AND 1 PRECEDING),
       wall AS (w ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING);

CREATE OR REPLACE TEMP TABLE stage_runs AS
SELECT contact_id, lifecycle_stage, occurred_at AS entered_at
FROM (
    SELECT *, lag(lifecycle_stage) OVER (PARTITION BY contact_id ORDER BY occurred_at, event_id)
           AS previous_stage
    FROM ev
    WHERE event_type IN ('contact.created', 'contact.updated') AND lifecycle_stage IS NOT NULL)
WHERE previous_stage IS NULL OR previous_stage <> lifecycle_stage;

CREATE OR REPLACE TEMP TABLE offers AS
SELECT d.contact_id, d.delivered_at::DATE AS delivered_day, r.opened_at, r.clicked_at
FROM (
    SELECT contact_id, coalesce(decision_id, event_id) AS decision, min(occurred_at) AS delivered_at
    FROM ev WHERE event_type = 'offer.delivered' GROUP BY ALL) d
LEFT JOIN (
    SELECT contact_id, coalesce(decision_id, event_id) AS decision,
           min(occurred_at) AS opened_at,
           min(occurred_at) FILTER (event_type = 'offer.clicked') AS clicked_at
    FROM ev WHERE event_type IN ('offer.opened', 'offer.clicked') GROUP BY ALL) r
USING (contact_id, decision);

CREATE OR REPLACE TEMP TABLE offer_windows AS
SELECT contact_id, (delivered_day + k::INTEGER) AS day, count(*) AS received,
       count(*) FILTER (opened_at < (delivered_day + k::INTEGER)::TIMESTAMP) AS opened,
       count(*) FILTER (clicked_at < (delivered_day + k::INTEGER)::TIMESTAMP) AS clicked
FROM offers, range(1, 31) t(k)
GROUP BY ALL;

CREATE OR REPLACE TABLE bench_baseline.contact_features_daily AS
SELECT w.contact_id, w.day AS feature_date, w.day::TIMESTAMP AS feature_ts,
       coalesce(w.spend_30d, 0)::DOUBLE AS spend_30d,
       coalesce(w.spend_90d, 0)::DOUBLE AS spend_90d,
       coalesce(w.orders_30d, 0)::INTEGER AS orders_30d,
       coalesce(w.orders_90d, 0)::INTEGER AS orders_90d,
       (w.spend_90d / nullif(w.orders_90d, 0))::DOUBLE AS avg_order_value_90d,
       coalesce(w.views_7d, 0)::INTEGER AS product_views_7d,
       coalesce(w.abandons_14d, 0)::INTEGER AS cart_abandons_14d,
       (w.day - w.last_purchase_day)::INTEGER AS days_since_last_purchase,
       s.lifecycle_stage,
       (list_position({stages}, s.lifecycle_stage) - 1)::INTEGER AS lifecycle_stage_rank,
       (w.day - s.entered_at::DATE)::INTEGER AS days_in_stage,
       (w.day - w.created_at::DATE)::INTEGER AS tenure_days,
       coalesce(o.received, 0)::INTEGER AS offers_received_30d,
       (o.opened / o.received)::DOUBLE AS offer_open_rate_30d,
       (o.clicked / o.received)::DOUBLE AS offer_click_rate_30d,
       w.last_delivery.a AS last_action,
       (w.day - w.last_offer_day)::INTEGER AS days_since_last_action
FROM windows w
ASOF LEFT JOIN stage_runs s
    ON s.contact_id = w.contact_id AND w.day::TIMESTAMP > s.entered_at
LEFT JOIN offer_windows o ON o.contact_id = w.contact_id AND o.day = w.day
WHERE w.created_at < w.day::TIMESTAMP
  AND w.day BETWEEN (SELECT first_day FROM bounds) AND (SELECT last_day FROM bounds);
"""

FEATURE_COLUMNS = ["contact_id", "feature_date", "feature_ts", *FEATURES]


def features_checksum(con: duckdb.DuckDBPyConnection, table: str) -> tuple[int, int]:
    """(rows, order-independent checksum over every feature column; doubles rounded to 1e-6)."""
    parts = [
        f"round({name}, 6)" if FEATURES.get(name) == "DOUBLE" else name for name in FEATURE_COLUMNS
    ]
    rows, checksum = con.execute(
        f"SELECT count(*), coalesce(sum(hash({', '.join(parts)}) % 1000000007), 0) FROM {table}"
    ).fetchone()
    return int(rows), int(checksum)


def run_baseline(con: duckdb.DuckDBPyConnection) -> None:
    """Compute the features with the plain DuckDB script into bench_baseline."""
    stages = "['" + "','".join(LIFECYCLE_STAGES) + "']"
    for statement in BASELINE_SQL.replace("{stages}", stages).split(";\n"):
        if statement.strip():
            con.execute(statement)


def run_dbt_build(home: Path, target_path: Path) -> tuple[float, dict]:
    """``dbt build`` of the feature marts in a subprocess, as Dagster runs it; returns the wall
    seconds and dbt's run results summary (dbt's own elapsed time, mart seconds, statuses)."""
    env = {**os.environ, "JOURNEY_HOME": str(home)}
    env.pop("JOURNEY_WAREHOUSE_PATH", None)
    dbt = Path(sys.executable).with_name("dbt")
    command = [
        str(dbt if dbt.exists() else "dbt"),
        "build",
        "--project-dir",
        str(DBT_PROJECT_DIR),
        "--profiles-dir",
        str(DBT_PROJECT_DIR),
        "--target-path",
        str(target_path),
        "--log-path",
        str(target_path),
        "--quiet",
    ]
    started = time.perf_counter()
    completed = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"dbt build failed:\n{completed.stdout}\n{completed.stderr}")
    results = json.loads((target_path / "run_results.json").read_text())
    by_node = {r["unique_id"].split(".")[-1]: r for r in results["results"]}
    tests_s = sum(r["execution_time"] for r in results["results"] if r["unique_id"][:5] == "test.")
    return seconds, {
        "dbt_elapsed_s": results["elapsed_time"],
        "mart_s": by_node["contact_features_daily"]["execution_time"],
        "export_s": by_node["contact_features_export"]["execution_time"],
        "tests_s": tests_s,
        "nodes": len(results["results"]),
    }


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print and return its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000,000 events instead of 10M")
    parser.add_argument("--events", type=int, default=None, help="number of events to generate")
    parser.add_argument("--home", type=Path, default=None, help="JOURNEY_HOME to use (kept)")
    args = parser.parse_args(argv)
    n_events = args.events or (1_000_000 if args.quick else 10_000_000)

    with tempfile.TemporaryDirectory(prefix="bench-dbt-") as scratch:
        home = args.home or Path(scratch) / "home"
        (home / "features").mkdir(parents=True, exist_ok=True)
        warehouse_path = home / "warehouse.duckdb"
        con = duckdb.connect(str(warehouse_path))
        con.execute("SET enable_progress_bar = false")
        con.execute("DROP TABLE IF EXISTS main.contact_features_daily")
        started = time.perf_counter()
        generated = generate_events(con, n_events)
        erased = erase_some_contacts(con)
        con.execute("CHECKPOINT")
        generate_s = time.perf_counter() - started
        con.close()  # the dbt subprocess opens the file itself

        dbt_s, dbt_summary = run_dbt_build(home, Path(scratch) / "dbt_target")

        con = duckdb.connect(str(warehouse_path))
        con.execute("SET enable_progress_bar = false")
        started = time.perf_counter()
        run_baseline(con)
        baseline_s = time.perf_counter() - started
        dbt_rows, dbt_checksum = features_checksum(con, "main.contact_features_daily")
        base_rows, base_checksum = features_checksum(con, "bench_baseline.contact_features_daily")
        con.close()

    result = {
        "events": generated["events"],
        "contacts": generated["contacts"],
        "erased_contacts": erased,
        "feature_rows": dbt_rows,
        "generate_s": round(generate_s, 2),
        "dbt_build_s": round(dbt_s, 2),
        **{k: round(v, 2) if isinstance(v, float) else v for k, v in dbt_summary.items()},
        "baseline_s": round(baseline_s, 2),
        "ratio": round(dbt_s / baseline_s, 2),
        "ratio_dbt_elapsed": round(dbt_summary["dbt_elapsed_s"] / baseline_s, 2),
        "ratio_mart_model": round(dbt_summary["mart_s"] / baseline_s, 2),
        "outputs_equal": (dbt_rows, dbt_checksum) == (base_rows, base_checksum),
        "baseline_rows": base_rows,
    }
    print(
        f"dbt build of the feature marts over {result['events']:,} events "
        f"({result['contacts']:,} contacts, {result['feature_rows']:,} feature rows): "
        f"{result['dbt_build_s']:.2f} s wall (dbt's own elapsed {result['dbt_elapsed_s']:.2f} s: "
        f"mart {result['mart_s']:.2f} s, export {result['export_s']:.2f} s, "
        f"{result['nodes']} nodes incl. tests {result['tests_s']:.2f} s)"
    )
    print(
        f"baseline plain DuckDB SQL: {result['baseline_s']:.2f} s, {base_rows:,} rows; "
        f"outputs equal: {result['outputs_equal']}"
    )
    print(
        f"ratio dbt build / baseline: {result['ratio']:.2f}x (target <= 1.5x); "
        f"dbt elapsed / baseline: {result['ratio_dbt_elapsed']:.2f}x; "
        f"mart model / baseline: {result['ratio_mart_model']:.2f}x"
    )
    print(json.dumps(result))
    if not result["outputs_equal"]:
        raise SystemExit("dbt and baseline features differ")
    return result


if __name__ == "__main__":
    main()
