import json

import dagster as dg
import numpy as np
import pandas as pd

from journey_pipeline.learn.sensors import drift_retrain_request, drift_retrain_sensor
from journey_pipeline.resources import JourneyResource


def test_drift_request_threshold_and_cooldown_in_feature_days():
    assert drift_retrain_request(0.1, "2026-02-01", {}) == (None, {})
    assert drift_retrain_request(None, "2026-02-01", {}) == (None, {})
    key, cursor = drift_retrain_request(0.5, "2026-02-01", {})
    assert key == "drift:2026-02-01" and cursor == {"last_retrain_window": "2026-02-01"}
    assert drift_retrain_request(0.9, "2026-02-05", cursor) == (None, cursor)  # cooling down
    key, _ = drift_retrain_request(0.9, "2026-02-08", cursor)
    assert key == "drift:2026-02-08"


def test_drift_sensor_requests_one_run_per_drifted_day(journey_home):
    reports = journey_home / "reports"
    reports.mkdir()
    resources = {"journey": JourneyResource(home=str(journey_home))}
    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            assert isinstance(drift_retrain_sensor(context), dg.SkipReason)  # no report yet
        pd.DataFrame(
            [
                {
                    "current_window": "2026-02-01",
                    "reference_window": "x",
                    "drift_share": 0.6,
                    "skipped_reason": None,
                }
            ]
        ).to_parquet(reports / "drift_history.parquet")
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            request = drift_retrain_sensor(context)
            cursor = context.cursor
        assert isinstance(request, dg.RunRequest) and request.run_key == "drift:2026-02-01"
        assert json.loads(cursor)["last_retrain_window"] == "2026-02-01"
        with dg.build_sensor_context(
            instance=instance, cursor=cursor, resources=resources
        ) as context:
            assert isinstance(drift_retrain_sensor(context), dg.SkipReason)


def test_a_skipped_drift_check_never_launches_and_says_why(journey_home):
    reports = journey_home / "reports"
    reports.mkdir()
    pd.DataFrame(
        [
            {
                "current_window": "2026-01-12",
                "reference_window": "2026-01-04..2026-01-08",
                "drift_share": None,
                "skipped_reason": "only 1 feature(s) have a full look-back window",
            }
        ]
    ).to_parquet(reports / "drift_history.parquet")
    resources = {"journey": JourneyResource(home=str(journey_home))}
    with (
        dg.instance_for_test() as instance,
        dg.build_sensor_context(instance=instance, resources=resources) as context,
    ):
        tick = drift_retrain_sensor(context)
    assert isinstance(tick, dg.SkipReason)
    assert "skipped: only 1 feature(s)" in tick.skip_message


def _outcomes(days: int, degraded_from: int, seed: int = 0) -> pd.DataFrame:
    """Matured live decisions, 200 a day: until ``degraded_from`` the model's score ranks the
    conversions and revenue is 10 a user; from then on the score is noise and revenue 9."""
    rng = np.random.default_rng(seed)
    rows = []
    for day in range(days):
        date = pd.Timestamp("2026-02-01") + pd.Timedelta(days=day)
        converted = rng.random(200) < 0.3
        good = day < degraded_from
        score = np.where(converted, 1.0, 0.0) + rng.normal(0, 0.5 if good else 5.0, 200)
        for i in range(200):
            rows.append(
                {
                    "decision_id": f"d-{day}-{i}",
                    "contact_id": f"C-{day}-{i}",
                    "decided_at": date,
                    "decision_date": date.date(),
                    "holdout": False,
                    "matured": True,
                    "expected_reward": float(score[i]),
                    "converted": bool(converted[i]),
                    "revenue": 10.0 if good else 9.0,
                }
            )
    return pd.DataFrame(rows)


def test_performance_sensor_reads_the_outcomes_it_judges(journey_home):
    """On real learn.outcomes: quiet while the model holds, a run once AUC and revenue per user
    have both dropped for seven consecutive days."""
    from journey_pipeline.learn.sensors import performance_retrain_sensor
    from journey_pipeline.warehouse import warehouse

    resources = {"journey": JourneyResource(home=str(journey_home))}
    for degraded_from, expect_run in ((30, False), (14, True)):
        with warehouse(journey_home / "warehouse.duckdb") as con:
            con.register("frame", _outcomes(21, degraded_from))
            con.execute("CREATE SCHEMA IF NOT EXISTS learn")
            con.execute("CREATE OR REPLACE TABLE learn.outcomes AS SELECT * FROM frame")
        with (
            dg.instance_for_test() as instance,
            dg.build_sensor_context(instance=instance, resources=resources) as context,
        ):
            result = performance_retrain_sensor(context)
        if expect_run:
            assert isinstance(result, dg.RunRequest), result
            assert result.run_key == "performance:2026-02-21"
        else:
            assert isinstance(result, dg.SkipReason), result
            assert "performance holds over 21 days" in result.skip_message
