"""Drift detection and the drift sensor on the features of a simulated world.

Two worlds from the same seed, 2,000 contacts each: one stationary, one whose behaviour drifts
on day 30 (more browsing and cart abandonment, more and different new contacts). Their events
are aggregated into the feature mart's windowed customer features (the same definitions as the
dbt mart: trailing calendar-day windows ending the day before the feature date), and every
day is checked the way the drift report asset does it, against a champion trained on data up
to day 20 (or day 12, while the 14-day window was still filling, which moves the reference
forward): windows, Evidently report, history row, one drift sensor tick. The stationary world
(whose windowed counts fill up from an empty history during the first weeks) must never
launch a retrain; the drifting one must launch exactly one, within five days of the drift.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from journey_pipeline.learn.analysis import (
    DRIFT_SHARE_THRESHOLD,
    append_drift_history,
    drift_history_onset,
    feature_windows,
)
from journey_pipeline.learn.drift import drift_report
from journey_pipeline.learn.sensors import drift_retrain_sensor
from journey_pipeline.resources import JourneyResource
from journey_pipeline.sim.crm import LocalCrmStore
from journey_pipeline.sim.world import World

START = date(2026, 1, 1)
CONTACTS = 2_000
DRIFT_DAY = 30
TRAINING_END = START + timedelta(days=20)  # the champion's data_valid_end

MART_SQL = """
CREATE SCHEMA raw;
CREATE TABLE raw.events AS
SELECT CAST(CAST("timestamp" AS TIMESTAMP) AS DATE) AS event_date, "type" AS event_type,
       payload->>'contact_id' AS contact_id, TRY_CAST(payload->>'amount' AS DOUBLE) AS amount
FROM read_json_auto('{landing}/*.jsonl', format = 'newline_delimited');
CREATE TABLE daily AS
SELECT contact_id, event_date AS d,
       count(*) FILTER (WHERE event_type = 'product.viewed') AS views,
       count(*) FILTER (WHERE event_type = 'cart.abandoned') AS carts,
       count(*) FILTER (WHERE event_type = 'payment.succeeded') AS orders,
       coalesce(sum(amount) FILTER (WHERE event_type = 'payment.succeeded'), 0) AS spend
FROM raw.events GROUP BY ALL;
CREATE TABLE contact_features_daily AS
WITH contacts AS (
    SELECT contact_id, min(event_date) AS created FROM raw.events
    WHERE event_type = 'contact.created'
        AND contact_id NOT IN (
            SELECT contact_id FROM raw.events WHERE event_type = 'contact.deleted'
        )
    GROUP BY ALL
),
days AS (
    SELECT CAST(range AS DATE) AS feature_date
    FROM range(DATE '{first}' + 1, DATE '{last}' + 2, INTERVAL 1 DAY)
),
grid AS (SELECT contact_id, feature_date FROM contacts JOIN days ON created < feature_date)
SELECT g.contact_id, g.feature_date,
    coalesce(sum(spend) FILTER (WHERE d >= g.feature_date - 30), 0) AS spend_30d,
    coalesce(sum(spend), 0) AS spend_90d,
    coalesce(sum(orders) FILTER (WHERE d >= g.feature_date - 30), 0) AS orders_30d,
    coalesce(sum(orders), 0) AS orders_90d,
    sum(spend) / nullif(sum(orders), 0) AS avg_order_value_90d,
    coalesce(sum(views) FILTER (WHERE d >= g.feature_date - 7), 0) AS product_views_7d,
    coalesce(sum(carts) FILTER (WHERE d >= g.feature_date - 14), 0) AS cart_abandons_14d
FROM grid g
LEFT JOIN daily ON daily.contact_id = g.contact_id
    AND d < g.feature_date AND d >= g.feature_date - 90
GROUP BY ALL;
"""


def simulated_mart(root: Path, days: int, drift_day: int | None) -> duckdb.DuckDBPyConnection:
    """Simulate ``days`` days without decisions and build the windowed features per day."""
    world = World.create(CONTACTS, seed=0, start_date=START, drift_day=drift_day)
    crm = LocalCrmStore(root / "crm.db")
    for _ in range(days):
        world.step(crm, root / "landing")
    con = duckdb.connect(str(root / "warehouse.duckdb"))
    last = START + timedelta(days=days - 1)
    con.execute(MART_SQL.format(landing=root / "landing", first=START, last=last))
    return con


def sensor_ticks(
    con, home: Path, feature_days: range, training_end: date = TRAINING_END
) -> list[tuple[int, float | None, object]]:
    """For each feature day index: the drift check as the asset runs it, then one tick of the
    drift sensor. Out: (day index, drift share, what the tick returned)."""
    resources = {"journey": JourneyResource(home=str(home))}
    history = home / "reports" / "drift_history.parquet"
    cursor = None
    ticks = []
    with dg.instance_for_test() as instance:
        for index in feature_days:
            day = START + timedelta(days=index)
            reference, current, info = feature_windows(con, training_end, current=day)
            result = None
            if not info.get("reason"):
                result = drift_report(reference, current, info["features"], None)
            append_drift_history(history, info, result)
            with dg.build_sensor_context(
                instance=instance, cursor=cursor, resources=resources
            ) as context:
                tick = drift_retrain_sensor(context)
                cursor = context.cursor
            ticks.append((index, result.drift_share if result else None, tick))
    return ticks


@pytest.fixture(scope="module")
def marts(tmp_path_factory):
    root = tmp_path_factory.mktemp("drift_worlds")
    (root / "stationary").mkdir()
    (root / "drifting").mkdir()
    stationary = simulated_mart(root / "stationary", 41, None)
    drifting = simulated_mart(root / "drifting", 36, DRIFT_DAY)
    yield stationary, drifting
    stationary.close()
    drifting.close()


def test_filling_windows_are_not_compared_and_the_rest_are(marts):
    stationary, _ = marts
    reference, current, info = feature_windows(stationary, TRAINING_END)
    assert info["reference_window"] == "2026-01-17..2026-01-21"
    assert info["features"] == ["product_views_7d", "cart_abandons_14d"]
    assert list(reference.columns) == info["features"] and len(current) >= CONTACTS
    assert set(info["warming_up"]) == {
        "spend_30d",
        "spend_90d",
        "orders_30d",
        "orders_90d",
        "avg_order_value_90d",
    }
    assert "warming up" in info["warming_up"]["spend_30d"]
    # A champion trained on day 12, while the 14-day window was still filling: the reference
    # moves forward to the first days both windows are full.
    _, _, early = feature_windows(stationary, START + timedelta(days=12))
    assert early["reference_window"] == "2026-01-15..2026-01-19" and "reference_moved" in early
    assert early["features"] == info["features"]
    # ... and before those days exist there is no reference: skipped with the reason.
    _, _, too_soon = feature_windows(
        stationary, START + timedelta(days=12), current=START + timedelta(days=17)
    )
    assert "no complete 5-day reference window" in too_soon["reason"]
    _, _, none = feature_windows(stationary, None)
    assert "no champion" in none["reason"]


def test_a_stationary_world_never_launches_a_drift_retrain(marts, tmp_path):
    stationary, _ = marts
    ticks = sensor_ticks(stationary, tmp_path, range(22, 42, 3))
    assert all(share is not None for _, share, _ in ticks)
    assert all(isinstance(tick, dg.SkipReason) for _, _, tick in ticks), ticks
    assert max(share for _, share, _ in ticks) < DRIFT_SHARE_THRESHOLD
    assert drift_history_onset(tmp_path / "reports") is None  # the retrain keeps its window


@pytest.mark.parametrize("trained_until", [20, 12])  # 12: reference moved forward
def test_real_drift_launches_one_retrain_within_five_days(marts, tmp_path, trained_until):
    _, drifting = marts
    # Feature day 31 is the first whose windows hold events of the drift day (index 30).
    training_end = START + timedelta(days=trained_until)
    ticks = sensor_ticks(drifting, tmp_path, range(DRIFT_DAY - 2, DRIFT_DAY + 7), training_end)
    requests = [(index, tick) for index, _, tick in ticks if isinstance(tick, dg.RunRequest)]
    assert len(requests) == 1, ticks  # the cooldown holds the following days back
    index, request = requests[0]
    assert DRIFT_DAY < index <= DRIFT_DAY + 5
    assert request.run_key == f"drift:{START + timedelta(days=index)}"
    assert request.tags["journey/trigger"] == "drift"
    # The retrain that follows learns from the decisions since that first drifted day.
    assert drift_history_onset(tmp_path / "reports") == START + timedelta(days=index)
    before = [share for i, share, _ in ticks if i <= DRIFT_DAY]
    assert max(before) < DRIFT_SHARE_THRESHOLD
