"""The same dbt feature marts on the real PostgreSQL (`dbt build --target postgres`): the
cross-database macros must give the values the DuckDB target gives."""

from __future__ import annotations

import datetime as dt
import gc
import json
import uuid
from pathlib import Path

import pytest

from journey_pipeline.features.contract import FEATURES, MART

psycopg2 = pytest.importorskip("psycopg2")

DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt_project"
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test"}
D = dt.date(2026, 3, 1)

RAW_DDL = """
CREATE SCHEMA raw;
CREATE SCHEMA ops;
CREATE TABLE raw.events (
    event_id VARCHAR PRIMARY KEY, occurred_at TIMESTAMP NOT NULL, event_date DATE NOT NULL,
    event_type VARCHAR NOT NULL, source VARCHAR NOT NULL, contact_id VARCHAR NOT NULL,
    lifecycle_stage VARCHAR, status VARCHAR, email_token VARCHAR, phone_token VARCHAR,
    amount DOUBLE PRECISION, currency VARCHAR, order_id VARCHAR, decision_id VARCHAR,
    product_id VARCHAR, payload JSONB, batch_id VARCHAR NOT NULL, ingested_at TIMESTAMP NOT NULL
);
CREATE TABLE ops.erasures (
    contact_id VARCHAR PRIMARY KEY, erased_at TIMESTAMP NOT NULL, event_id VARCHAR NOT NULL
);
"""

# (contact, type, occurred_at, stage, amount, decision, action)
EVENTS = [
    ("C-1", "contact.created", "2025-11-20 08:00:00", "lead", None, None, None),
    ("C-1", "contact.updated", "2026-02-15 12:00:00", "mql", None, None, None),
    ("C-1", "contact.updated", "2026-03-01 00:00:00", "sql", None, None, None),
    ("C-1", "payment.succeeded", "2025-12-01 10:00:00", None, 7.0, None, None),
    ("C-1", "payment.succeeded", "2026-01-29 23:59:59", None, 40.0, None, None),
    ("C-1", "payment.succeeded", "2026-01-30 00:00:00", None, 100.0, None, None),
    ("C-1", "payment.succeeded", "2026-03-01 00:00:00", None, 1000.0, None, None),
    ("C-1", "product.viewed", "2026-02-22 00:00:00", None, None, None, None),
    ("C-1", "product.viewed", "2026-02-21 23:59:59", None, None, None, None),
    ("C-1", "cart.abandoned", "2026-02-15 00:00:00", None, None, None, None),
    ("C-1", "offer.delivered", "2026-02-10 10:00:00", None, None, "d1", "offer_a"),
    ("C-1", "offer.clicked", "2026-02-11 08:05:00", None, None, "d1", None),
    ("C-1", "offer.delivered", "2026-02-20 09:00:00", None, None, "d2", "offer_b"),
    ("C-1", "offer.opened", "2026-03-01 00:00:00", None, None, "d2", None),
    ("C-3", "contact.created", "2026-02-27 10:00:00", "subscriber", None, None, None),
    ("C-4", "contact.created", "2026-01-05 10:00:00", "lead", None, None, None),
    ("C-4", "payment.succeeded", "2026-02-05 10:00:00", None, 15.0, None, None),
]


def postgres_or_skip():
    try:
        return psycopg2.connect(connect_timeout=3, **PG)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable on 127.0.0.1:5432 ({exc})")


@pytest.fixture
def postgres_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A throw-away database with raw.events and ops.erasures loaded, dropped afterwards."""
    admin = postgres_or_skip()
    admin.autocommit = True
    name = f"journey_dbt_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        con = psycopg2.connect(**{**PG, "dbname": name})
        with con, con.cursor() as cur:
            cur.execute(RAW_DDL)
            for n, (contact, kind, at, stage, amount, decision, action) in enumerate(EVENTS):
                cur.execute(
                    "INSERT INTO raw.events (event_id, occurred_at, event_date, event_type, "
                    "source, contact_id, lifecycle_stage, amount, decision_id, payload, "
                    "batch_id, ingested_at) VALUES (%s, %s, %s::timestamp::date, %s, 'test', "
                    "%s, %s, %s, %s, %s, 'b', now())",
                    [
                        f"e{n}",
                        at,
                        at,
                        kind,
                        contact,
                        stage,
                        amount,
                        decision,
                        json.dumps({"action": action}) if action else None,
                    ],
                )
            cur.execute("INSERT INTO ops.erasures VALUES ('C-4', '2026-02-10 00:00', 'e-del')")
        con.close()
        monkeypatch.setenv("JOURNEY_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("JOURNEY_PG_DATABASE", name)
        monkeypatch.delenv("JOURNEY_PG_SCHEMA", raising=False)
        yield name
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.mark.postgres
def test_dbt_build_on_postgres_gives_the_duckdb_values(
    postgres_database: str, tmp_path: Path
) -> None:
    from dbt.cli.main import dbtRunner

    result = dbtRunner().invoke(
        [
            "build",
            "--target",
            "postgres",
            "--project-dir",
            str(DBT_PROJECT_DIR),
            "--profiles-dir",
            str(DBT_PROJECT_DIR),
            "--target-path",
            str(tmp_path / "dbt_target"),
            "--log-path",
            str(tmp_path / "dbt_logs"),
            "--quiet",
        ]
    )
    gc.collect()
    assert result.exception is None, result.exception
    statuses = {r.node.name: str(r.status) for r in result.result}
    assert {n: s for n, s in statuses.items() if s not in ("success", "pass")} == {}
    assert statuses["contact_features_export"] == "success"  # a view on PostgreSQL

    con = psycopg2.connect(**{**PG, "dbname": postgres_database})
    try:
        with con.cursor() as cur:
            cur.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'journey' AND table_name = %s",
                [MART],
            )
            types = dict(cur.fetchall())
            cur.execute(f"SELECT * FROM journey.{MART} WHERE feature_date = %s", [D])
            names = [c.name for c in cur.description]
            rows = {row[0]: dict(zip(names, row, strict=True)) for row in cur.fetchall()}
            cur.execute("SELECT count(*) FROM journey.contact_features_export")
            exported = cur.fetchone()[0]
            cur.execute(f"SELECT count(*) FROM journey.{MART}")
            total = cur.fetchone()[0]
    finally:
        con.close()

    pg_types = {"DOUBLE": "double precision", "INTEGER": "integer", "VARCHAR": "character varying"}
    assert {k: types[k] for k in FEATURES} == {k: pg_types[v] for k, v in FEATURES.items()}
    assert set(rows) == {"C-1", "C-3"}  # C-4 is erased
    assert exported == total > 0
    c1 = rows["C-1"]
    assert c1["feature_ts"] == dt.datetime(2026, 3, 1)
    assert (c1["spend_30d"], c1["orders_30d"]) == (100.0, 1)
    assert (c1["spend_90d"], c1["orders_90d"]) == (147.0, 3)
    assert c1["avg_order_value_90d"] == pytest.approx(49.0)
    assert c1["days_since_last_purchase"] == 30
    assert (c1["product_views_7d"], c1["cart_abandons_14d"]) == (1, 1)
    assert (c1["lifecycle_stage"], c1["lifecycle_stage_rank"], c1["days_in_stage"]) == (
        "mql",
        2,
        14,
    )
    assert c1["tenure_days"] == (D - dt.date(2025, 11, 20)).days
    assert c1["offers_received_30d"] == 2
    assert (c1["offer_open_rate_30d"], c1["offer_click_rate_30d"]) == (0.5, 0.5)
    assert (c1["last_action"], c1["days_since_last_action"]) == ("offer_b", 9)
    c3 = rows["C-3"]
    assert (c3["spend_30d"], c3["orders_90d"], c3["avg_order_value_90d"]) == (0.0, 0, None)
    assert (c3["tenure_days"], c3["last_action"], c3["offer_open_rate_30d"]) == (2, None, None)
