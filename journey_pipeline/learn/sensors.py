"""Sensors and schedules of the learn stage: retrain on drift, on degraded performance, and
weekly as the fallback cadence. Retraining only ever produces a challenger; promotion goes
through the blocking gate.

The drift sensor reads the newest row of ``reports/drift_history.parquet`` written by the
``drift_report`` asset. A check that was skipped (no champion yet, features still warming up,
too few rows) has no drift share and never launches a run.
"""

import json
from datetime import date

import dagster as dg
import pandas as pd

from journey_pipeline.learn.analysis import (
    DRIFT_SHARE_THRESHOLD,
    daily_model_metrics,
    outcome_frame,
)
from journey_pipeline.learn.guardrails import performance_degraded
from journey_pipeline.resources import JourneyResource
from journey_pipeline.warehouse import warehouse

RETRAIN_JOB = "retrain_job"
DRIFT_COOLDOWN_DAYS = 7


def drift_retrain_request(
    drift_share: float | None,
    current_window: str,
    cursor: dict,
    *,
    threshold: float = DRIFT_SHARE_THRESHOLD,
    cooldown_days: int = DRIFT_COOLDOWN_DAYS,
) -> tuple[str | None, dict]:
    """Decide whether drift calls for a retrain.

    In: the drift share of the newest report, the feature day it describes, and the sensor's
    cursor (``last_retrain_window``). Out: a run key (None: no retrain) and the new cursor.
    The cooldown is measured in feature days, the loop's own clock, so a simulated world
    behaves like a real one.
    """
    if drift_share is None or pd.isna(drift_share) or drift_share < threshold:
        return None, cursor
    last = cursor.get("last_retrain_window")
    if (
        last
        and (date.fromisoformat(current_window) - date.fromisoformat(last)).days < cooldown_days
    ):
        return None, cursor
    return f"drift:{current_window}", {**cursor, "last_retrain_window": current_window}


@dg.sensor(
    name="drift_retrain_sensor",
    job_name=RETRAIN_JOB,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        f"Launches retrain_job when the newest drift report's drift share is at or above "
        f"{DRIFT_SHARE_THRESHOLD} (cooldown {DRIFT_COOLDOWN_DAYS} feature days; run_key per "
        "feature day, so a re-evaluated tick never launches twice)."
    ),
)
def drift_retrain_sensor(context: dg.SensorEvaluationContext, journey: JourneyResource):
    history = journey.settings().reports_dir / "drift_history.parquet"
    if not history.exists():
        return dg.SkipReason("no drift report yet")
    last = pd.read_parquet(history).iloc[-1]
    cursor = json.loads(context.cursor) if context.cursor else {}
    run_key, cursor = drift_retrain_request(
        last["drift_share"], str(last["current_window"]), cursor
    )
    context.update_cursor(json.dumps(cursor))
    if run_key is None:
        if last["drift_share"] is None or pd.isna(last["drift_share"]):
            return dg.SkipReason(
                f"drift check of {last['current_window']} skipped: {last['skipped_reason']}"
            )
        return dg.SkipReason(
            f"drift share {last['drift_share']:.3f} on {last['current_window']}: below "
            f"{DRIFT_SHARE_THRESHOLD} or cooling down since {cursor.get('last_retrain_window')}"
        )
    return dg.RunRequest(
        run_key=run_key,
        tags={"journey/trigger": "drift", "journey/drift_share": f"{last['drift_share']:.3f}"},
    )


@dg.sensor(
    name="performance_retrain_sensor",
    job_name=RETRAIN_JOB,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Launches retrain_job when the champion's AUC has dropped 3% and revenue per user 1% "
        "for seven consecutive days (against the first week of its data)."
    ),
)
def performance_retrain_sensor(context: dg.SensorEvaluationContext, journey: JourneyResource):
    settings = journey.settings()
    if not settings.warehouse_path.exists():
        return dg.SkipReason("no warehouse yet")
    with warehouse(settings.warehouse_path, read_only=True) as con:
        tables = {
            r[0]
            for r in con.execute(
                "SELECT table_schema || '.' || table_name FROM information_schema.tables"
            ).fetchall()
        }
        if "learn.outcomes" not in tables:
            return dg.SkipReason("no outcomes yet")
        daily = daily_model_metrics(outcome_frame(con))
    if not performance_degraded(daily):
        return dg.SkipReason(f"performance holds over {len(daily)} days of outcomes")
    last_day = pd.Timestamp(daily["date"].max()).date().isoformat()
    return dg.RunRequest(run_key=f"performance:{last_day}", tags={"journey/trigger": "performance"})


weekly_retrain_schedule = dg.ScheduleDefinition(
    name="weekly_retrain_schedule",
    job_name=RETRAIN_JOB,
    cron_schedule="0 3 * * 1",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Fallback cadence: retrain every Monday 03:00 UTC even without drift.",
)

learn_sensors = [drift_retrain_sensor, performance_retrain_sensor]
learn_schedules = [weekly_retrain_schedule]
