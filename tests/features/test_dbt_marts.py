"""The dbt feature marts on a real DuckDB warehouse: hand-computed feature values, the cutoff,
incremental windows, empty input, defaults for contacts without history, and erasure.

dbt runs in-process (dbt's programmatic runner) against a warehouse file under each test's own
JOURNEY_HOME; no DuckDB connection is held while it runs.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
from pathlib import Path

import pytest

from journey_pipeline.features.contract import (
    ACQUISITION_CHANNELS,
    EXPORT_FILE,
    FEATURES,
    LIFECYCLE_STAGES,
    MART,
)
from journey_pipeline.features.dbt_args import dbt_build_args, feature_window_vars
from journey_pipeline.warehouse import ensure_core_schema, warehouse

DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt_project"
D = dt.date(2026, 3, 1)  # the feature date most expectations are computed for


def run_dbt(home: Path, args: list[str], *, failures: bool = False) -> dict:
    """Run dbt in-process on the project; return {node name: status} of what ran, or
    {node name: (status, failing rows)} with ``failures``."""
    from dbt.cli.main import dbtRunner

    result = dbtRunner().invoke(
        [
            *args,
            "--project-dir",
            str(DBT_PROJECT_DIR),
            "--profiles-dir",
            str(DBT_PROJECT_DIR),
            "--target-path",
            str(home / "dbt_target"),
            "--log-path",
            str(home / "dbt_logs"),
            "--quiet",
        ]
    )
    # In-process, dbt-duckdb keeps its database instance until the process exits; release it
    # (as the adapter does at exit) so the test's own connections see a closed file.
    from dbt.adapters.duckdb.connections import DuckDBConnectionManager

    DuckDBConnectionManager.close_all_connections()
    gc.collect()
    if result.exception is not None:
        raise result.exception
    if failures:
        return {r.node.name: (str(r.status), r.failures) for r in result.result}
    return {r.node.name: str(r.status) for r in result.result}


def assert_all_passed(statuses: dict[str, str]) -> None:
    failed = {name: s for name, s in statuses.items() if s not in ("success", "pass")}
    assert not failed, failed


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    journey_home = tmp_path / "home"
    (journey_home / "features").mkdir(parents=True)
    monkeypatch.setenv("JOURNEY_HOME", str(journey_home))
    monkeypatch.delenv("JOURNEY_WAREHOUSE_PATH", raising=False)
    monkeypatch.delenv("JOURNEY_DBT_TARGET", raising=False)
    with warehouse(journey_home / "warehouse.duckdb") as con:
        ensure_core_schema(con)
    return journey_home


def add_events(home: Path, events: list[dict]) -> None:
    """Insert canonical events into raw.events (fields default to NULL)."""
    with warehouse(home / "warehouse.duckdb") as con:
        for n, event in enumerate(events):
            occurred_at = dt.datetime.fromisoformat(event["at"])
            payload = {"action": event["action"]} if "action" in event else {}
            payload.update(event.get("properties", {}))
            con.execute(
                """
                INSERT INTO raw.events (event_id, occurred_at, event_date, event_type, source,
                    contact_id, lifecycle_stage, status, amount, decision_id, payload, batch_id,
                    ingested_at)
                VALUES (?, ?, ?, ?, 'test', ?, ?, ?, ?, ?, ?, 'test-batch', now())
                """,
                [
                    event.get("id", f"{event['contact']}-{event['type']}-{event['at']}-{n}"),
                    occurred_at,
                    occurred_at.date(),
                    event["type"],
                    event["contact"],
                    event.get("stage"),
                    event.get("status"),
                    event.get("amount"),
                    event.get("decision"),
                    json.dumps(payload) if payload else None,
                ],
            )


def erase(home: Path, contact_id: str, at: str) -> None:
    with warehouse(home / "warehouse.duckdb") as con:
        con.execute(
            "INSERT INTO ops.erasures VALUES (?, ?, ?)",
            [contact_id, dt.datetime.fromisoformat(at), f"deleted-{contact_id}"],
        )


def feature_rows(home: Path, where: str = "true") -> dict[tuple[str, dt.date], dict]:
    with warehouse(home / "warehouse.duckdb", read_only=True) as con:
        cur = con.execute(f"SELECT * FROM {MART} WHERE {where}")
        names = [d[0] for d in cur.description]
        return {(row[0], row[1]): dict(zip(names, row, strict=True)) for row in cur.fetchall()}


def payment(contact: str, at: str, amount: float) -> dict:
    return {"contact": contact, "type": "payment.succeeded", "at": at, "amount": amount}


# C-1: a full history with events placed on the edges of every window of feature date D.
# C-2: created exactly at D's cutoff. C-3: created two days before D, no other event.
HISTORY = [
    {"contact": "C-1", "type": "contact.created", "at": "2025-11-20T08:00:00", "stage": "lead"},
    {"contact": "C-1", "type": "contact.updated", "at": "2026-02-15T12:00:00", "stage": "mql"},
    {"contact": "C-1", "type": "contact.updated", "at": "2026-02-20T12:00:00", "stage": "MQL "},
    {"contact": "C-1", "type": "contact.updated", "at": "2026-03-01T00:00:00", "stage": "sql"},
    payment("C-1", "2025-11-30T23:00:00", 3.0),  # before D-90: in no window of D
    payment("C-1", "2025-12-01T10:00:00", 7.0),  # D-90 day: in 90d only
    payment("C-1", "2026-01-29T23:59:59", 40.0),  # one second before D-30: 90d only
    payment("C-1", "2026-01-30T00:00:00", 100.0),  # exactly D-30 00:00: in 30d
    payment("C-1", "2026-03-01T00:00:00", 1000.0),  # exactly D's cutoff: not for D
    payment("C-1", "2026-03-05T09:00:00", 500.0),  # after the cutoff
    {"contact": "C-1", "type": "product.viewed", "at": "2026-02-21T23:59:59"},  # D-8: out
    {"contact": "C-1", "type": "product.viewed", "at": "2026-02-22T00:00:00"},  # D-7: in
    {"contact": "C-1", "type": "product.viewed", "at": "2026-02-28T23:59:59"},  # in
    {"contact": "C-1", "type": "product.viewed", "at": "2026-03-01T00:00:00"},  # cutoff: out
    {"contact": "C-1", "type": "cart.abandoned", "at": "2026-02-14T12:00:00"},  # D-15: out
    {"contact": "C-1", "type": "cart.abandoned", "at": "2026-02-15T00:00:00"},  # D-14: in
    # Offers: d3 is older than 30 days; d2 is opened exactly at the cutoff.
    {
        "contact": "C-1",
        "type": "offer.delivered",
        "at": "2026-01-15T10:00:00",
        "decision": "d3",
        "action": "no_offer",
    },
    {"contact": "C-1", "type": "offer.opened", "at": "2026-01-16T10:00:00", "decision": "d3"},
    {
        "contact": "C-1",
        "type": "offer.delivered",
        "at": "2026-02-10T10:00:00",
        "decision": "d1",
        "action": "offer_a",
    },
    {"contact": "C-1", "type": "offer.opened", "at": "2026-02-11T08:00:00", "decision": "d1"},
    {"contact": "C-1", "type": "offer.clicked", "at": "2026-02-11T08:05:00", "decision": "d1"},
    {
        "contact": "C-1",
        "type": "offer.delivered",
        "at": "2026-02-20T09:00:00",
        "decision": "d2",
        "action": "offer_b",
    },
    {"contact": "C-1", "type": "offer.opened", "at": "2026-03-01T00:00:00", "decision": "d2"},
    {
        "contact": "C-2",
        "type": "contact.created",
        "at": "2026-03-01T00:00:00",
        "stage": "subscriber",
    },
    {
        "contact": "C-3",
        "type": "contact.created",
        "at": "2026-02-27T10:00:00",
        "stage": "subscriber",
    },
]

NO_HISTORY_DEFAULTS = {
    "spend_30d": 0.0,
    "spend_90d": 0.0,
    "orders_30d": 0,
    "orders_90d": 0,
    "avg_order_value_90d": None,
    "product_views_7d": 0,
    "cart_abandons_14d": 0,
    "days_since_last_purchase": None,
    "offers_received_30d": 0,
    "offer_open_rate_30d": None,
    "offer_click_rate_30d": None,
    "last_action": None,
    "days_since_last_action": None,
}


def test_features_match_hand_computed_values_at_window_edges(home: Path) -> None:
    """Hand-computed values for D and D + 1; events at D's cutoff and after it (payments,
    views, an offer open, a stage change) must not show in D's row (point in time)."""
    add_events(home, HISTORY)
    assert_all_passed(run_dbt(home, dbt_build_args()))
    rows = feature_rows(home)

    c1 = rows[("C-1", D)]
    assert c1["feature_ts"] == dt.datetime(2026, 3, 1)
    assert c1["spend_30d"] == 100.0
    assert c1["orders_30d"] == 1
    assert c1["spend_90d"] == 147.0  # 7 + 40 + 100
    assert c1["orders_90d"] == 3
    assert c1["avg_order_value_90d"] == pytest.approx(49.0)
    assert c1["days_since_last_purchase"] == 30  # 2026-01-30
    assert c1["product_views_7d"] == 2
    assert c1["cart_abandons_14d"] == 1
    # The stage set exactly at the cutoff is not known yet; " MQL" repeats the stage.
    assert c1["lifecycle_stage"] == "mql"
    assert c1["lifecycle_stage_rank"] == LIFECYCLE_STAGES.index("mql")
    assert c1["days_in_stage"] == 14  # since 2026-02-15
    assert c1["tenure_days"] == (D - dt.date(2025, 11, 20)).days
    assert c1["offers_received_30d"] == 2  # d1, d2
    assert c1["offer_open_rate_30d"] == 0.5  # d2's open is at the cutoff
    assert c1["offer_click_rate_30d"] == 0.5
    assert c1["last_action"] == "offer_b"
    assert c1["days_since_last_action"] == 9  # 2026-02-20

    # One day later the cutoff events count and the 30-day window has moved past 2026-01-30.
    c1_next = rows[("C-1", D + dt.timedelta(days=1))]
    assert c1_next["spend_30d"] == 1000.0
    assert c1_next["spend_90d"] == 1140.0  # 40 + 100 + 1000; 2025-12-01 left the window
    assert c1_next["days_since_last_purchase"] == 1
    assert c1_next["product_views_7d"] == 2  # 2026-02-22 left, the cutoff view joined
    assert c1_next["lifecycle_stage"] == "sql"
    assert c1_next["days_in_stage"] == 1
    assert c1_next["offer_open_rate_30d"] == 1.0

    # A contact exists from its creation: created at D's cutoff, it has no row for D.
    assert ("C-2", D) not in rows
    c2 = rows[("C-2", D + dt.timedelta(days=1))]
    assert {k: c2[k] for k in NO_HISTORY_DEFAULTS} == NO_HISTORY_DEFAULTS
    assert (c2["tenure_days"], c2["days_in_stage"], c2["lifecycle_stage"]) == (1, 1, "subscriber")
    c3 = rows[("C-3", D)]
    assert {k: c3[k] for k in NO_HISTORY_DEFAULTS} == NO_HISTORY_DEFAULTS
    assert (c3["tenure_days"], c3["lifecycle_stage_rank"]) == (2, 0)

    # Grain: one row per contact and day, from the day after creation to the day after the
    # newest event (2026-03-05), and the contract's columns with the contract's types.
    newest_cutoff = dt.date(2026, 3, 6)
    expected_days = {
        "C-1": (newest_cutoff - dt.date(2025, 11, 20)).days,
        "C-2": (newest_cutoff - dt.date(2026, 3, 1)).days,
        "C-3": (newest_cutoff - dt.date(2026, 2, 27)).days,
    }
    assert {c: sum(1 for (cid, _) in rows if cid == c) for c in expected_days} == expected_days
    with warehouse(home / "warehouse.duckdb", read_only=True) as con:
        types = dict(
            con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {MART})").fetchall()
        )
        exported = con.execute(
            "SELECT count(*), count(DISTINCT contact_id) FROM read_parquet(?)",
            [str(home / "features" / EXPORT_FILE)],
        ).fetchone()
    assert list(types)[:4] == ["contact_id", "feature_date", "feature_ts", "created_ts"]
    assert {k: v for k, v in types.items() if k in FEATURES} == FEATURES
    assert set(types) == {"contact_id", "feature_date", "feature_ts", "created_ts", *FEATURES}
    assert exported == (len(rows), 3)


@pytest.mark.slow
def test_incremental_vars_rebuild_exactly_their_days(home: Path) -> None:
    add_events(home, HISTORY)
    assert_all_passed(run_dbt(home, dbt_build_args()))
    first = feature_rows(home)

    # A late-arriving payment changes every day after it, but only the window is rebuilt.
    add_events(home, [payment("C-3", "2026-02-28T12:00:00", 20.0)])
    assert_all_passed(run_dbt(home, dbt_build_args(feature_window_vars(D, D))))
    second = feature_rows(home)
    assert set(second) == set(first)
    assert second[("C-3", D)]["spend_30d"] == 20.0
    assert second[("C-3", D)]["days_since_last_purchase"] == 1
    next_day = D + dt.timedelta(days=1)
    assert second[("C-3", next_day)]["spend_30d"] == 0.0  # untouched: outside the window
    assert all(second[key] == first[key] for key in first if key[1] != D)
    assert all(second[key]["created_ts"] >= first[key]["created_ts"] for key in first)

    # Without vars a run continues after the latest built day: nothing new, nothing changes.
    assert_all_passed(run_dbt(home, dbt_build_args(command="run")))
    assert feature_rows(home) == second

    # A new day of events: the next run builds exactly the one new day.
    add_events(home, [{"contact": "C-3", "type": "product.viewed", "at": "2026-03-06T10:00:00"}])
    assert_all_passed(run_dbt(home, dbt_build_args()))
    third = feature_rows(home)
    new_keys = set(third) - set(second)
    assert new_keys == {(c, dt.date(2026, 3, 7)) for c in ("C-1", "C-2", "C-3")}
    assert all(third[key] == second[key] for key in second)


@pytest.mark.slow
def test_days_without_events_and_an_empty_warehouse_build_cleanly(home: Path) -> None:
    # No events at all: every model and test passes, and the mart is empty.
    assert_all_passed(run_dbt(home, dbt_build_args()))
    assert feature_rows(home) == {}

    # Days after the newest event still have rows: the contacts exist, their windows decay.
    add_events(home, HISTORY)
    quiet_days = feature_window_vars(dt.date(2026, 6, 1), dt.date(2026, 6, 2))
    assert_all_passed(run_dbt(home, dbt_build_args(quiet_days)))
    rows = feature_rows(home)
    assert set(rows) == {
        (c, d) for c in ("C-1", "C-2", "C-3") for d in (dt.date(2026, 6, 1), dt.date(2026, 6, 2))
    }
    c1 = rows[("C-1", dt.date(2026, 6, 1))]
    assert (c1["spend_30d"], c1["orders_90d"], c1["spend_90d"]) == (0.0, 1, 500.0)
    assert c1["days_since_last_purchase"] == (dt.date(2026, 6, 1) - dt.date(2026, 3, 5)).days
    assert c1["offer_open_rate_30d"] is None


@pytest.mark.slow
def test_erased_contact_leaves_every_built_day(home: Path) -> None:
    add_events(home, HISTORY)
    assert_all_passed(run_dbt(home, dbt_build_args()))
    assert any(cid == "C-1" for cid, _ in feature_rows(home))

    erase(home, "C-1", "2026-03-05T12:00:00")
    # The next run has no new day to build, yet the contact leaves all days and the export.
    assert_all_passed(run_dbt(home, dbt_build_args()))
    rows = feature_rows(home)
    assert rows and all(cid != "C-1" for cid, _ in rows)
    with warehouse(home / "warehouse.duckdb", read_only=True) as con:
        exported = con.execute(
            "SELECT count(*) FILTER (contact_id = 'C-1'), count(*) FROM read_parquet(?)",
            [str(home / "features" / EXPORT_FILE)],
        ).fetchone()
    assert exported == (0, len(rows))


def test_cutoff_test_fails_on_feature_rows_that_used_later_events(home: Path) -> None:
    add_events(home, HISTORY)
    next_day = D + dt.timedelta(days=1)
    assert_all_passed(run_dbt(home, dbt_build_args(feature_window_vars(D, next_day))))
    cutoff_test = ["test", "--select", "assert_features_use_only_events_before_cutoff"]
    assert_all_passed(run_dbt(home, cutoff_test))

    with warehouse(home / "warehouse.duckdb") as con:
        # What a window reaching past the cutoff would produce for D (the 1000.00 payment at
        # D 00:00 counted), and a last purchase dated on the cutoff day for D + 1.
        con.execute(
            f"UPDATE {MART} SET orders_90d = orders_90d + 1, spend_90d = spend_90d + 1000 "
            "WHERE contact_id = 'C-1' AND feature_date = ?",
            [D],
        )
        con.execute(
            f"UPDATE {MART} SET days_since_last_purchase = 0 "
            "WHERE contact_id = 'C-1' AND feature_date = ?",
            [next_day],
        )
    assert run_dbt(home, cutoff_test, failures=True) == {
        "assert_features_use_only_events_before_cutoff": ("fail", 2)
    }


def test_unknown_lifecycle_stage_fails_accepted_values(home: Path) -> None:
    add_events(
        home,
        [
            {
                "contact": "C-9",
                "type": "contact.created",
                "at": "2026-02-01T00:00:00",
                "stage": "vip",
            }
        ],
    )
    statuses = run_dbt(home, dbt_build_args())
    failing = {name for name, status in statuses.items() if status == "fail"}
    assert failing == {
        "accepted_values_contact_features_daily_lifecycle_stage__subscriber__lead__mql__sql__"
        "opportunity__customer__churned",
        "null_exactly_when_contact_features_daily_lifecycle_stage_rank__lifecycle_stage_is_null",
    }
    # dbt does not export features that failed their tests.
    assert statuses["contact_features_export"] == "skipped"
    assert not (home / "features" / EXPORT_FILE).exists()


def test_crm_properties_are_taken_as_of_the_cutoff(home: Path) -> None:
    """acquisition_channel and loyalty_member come from the latest contact.* event before the
    cutoff that carried them; an update without them keeps them; an unlisted channel has no
    rank; a contact whose events never carried them has NULLs."""

    def contact(cid: str, kind: str, at: str, **properties: object) -> dict:
        return {"contact": cid, "type": kind, "at": at, "stage": "lead", "properties": properties}

    add_events(
        home,
        [
            contact(
                "C-1",
                "contact.created",
                "2026-02-01T08:00:00",
                acquisition_channel="coupon_site",
                loyalty_member=False,
            ),
            contact("C-1", "contact.updated", "2026-02-20T08:00:00"),  # no properties
            contact("C-1", "contact.updated", "2026-03-01T00:00:00", loyalty_member=True),
            contact("C-2", "contact.created", "2026-02-01T08:00:00", acquisition_channel="tv"),
            contact("C-3", "contact.created", "2026-02-01T08:00:00"),
        ],
    )
    assert_all_passed(run_dbt(home, dbt_build_args()))
    rows = feature_rows(home)
    properties = ("acquisition_channel", "acquisition_channel_rank", "loyalty_member")
    at = {key: tuple(row[name] for name in properties) for key, row in rows.items()}
    assert at[("C-1", D)] == ("coupon_site", ACQUISITION_CHANNELS.index("coupon_site"), 0)
    # Set exactly at D's cutoff: known from D + 1 on.
    assert at[("C-1", D + dt.timedelta(days=1))] == ("coupon_site", 2, 1)
    assert at[("C-2", D)] == ("tv", None, None)
    assert at[("C-3", D)] == (None, None, None)


def test_dbt_lifecycle_stages_mirror_the_contract() -> None:
    import yaml

    project = yaml.safe_load((DBT_PROJECT_DIR / "dbt_project.yml").read_text())
    assert project["vars"]["lifecycle_stages"] == LIFECYCLE_STAGES
    assert project["vars"]["acquisition_channels"] == ACQUISITION_CHANNELS
    marts = yaml.safe_load((DBT_PROJECT_DIR / "models" / "marts" / "_marts.yml").read_text())
    stage_column = next(c for c in marts["models"][0]["columns"] if c["name"] == "lifecycle_stage")
    accepted = stage_column["data_tests"][0]["accepted_values"]["arguments"]["values"]
    assert accepted == LIFECYCLE_STAGES
