"""`journey demo`: run the closed loop on a simulated world, one Dagster run per day.

Each simulated day: the simulator applies yesterday's CRM tasks and writes the day's events;
`daily_loop_job` ingests them, builds the features as of the day's close, serves them online,
decides for the day's triggered contacts, writes the decisions to the CRM and updates
outcomes; `analysis_job` measures lift, drift, the guardrail and the scoreboard. The drift
sensor is evaluated on its own code after each analysis and its run request executed (under
`make ui` the Dagster daemon does this); a weekly retrain is the fallback cadence.

At the end the HTML report (:mod:`journey_pipeline.demo_report`) is written to
``JOURNEY_HOME/reports/demo.html`` from what the run stored, and the summary carries the
policy's incremental margin against the oracle and the baselines (:func:`render_margins`).
A rich ``Progress`` given to :func:`run_demo` shows one bar per stage (simulate, daily loop,
analysis and drift sensor, retrain, report) and the day and stage under way.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import dagster as dg
from rich.progress import Progress, TaskID
from rich.table import Table

from journey_pipeline.demo_report import DEMO_DAY_TAG, TRIGGER_TAG
from journey_pipeline.instance import dagster_instance
from journey_pipeline.settings import Settings

DAILY_JOB = "daily_loop_job"
RETRAIN_JOB = "retrain_job"
ANALYSIS_JOB = "analysis_job"


STAGES = ("simulate", "daily loop", "analysis + drift sensor", "retrain")


class _StageProgress:
    """One progress bar per stage plus an overall bar naming the day and stage under way;
    also adds up the seconds spent in each stage. Works without a ``Progress`` (no bars)."""

    def __init__(self, progress: Progress | None, days: int) -> None:
        self.progress, self.days = progress, days
        self.seconds: dict[str, float] = {stage: 0.0 for stage in (*STAGES, "report")}
        self.tasks: dict[str, TaskID] = {}
        if progress is not None:
            self.overall = progress.add_task("demo", total=days)
            for stage in STAGES:
                self.tasks[stage] = progress.add_task(f"  {stage}", total=days)
            self.tasks["report"] = progress.add_task("  report", total=1)

    def start(self, day_index: int, day: str | None, stage: str) -> float:
        if self.progress is not None:
            label = f"day {day_index + 1}/{self.days}" + (f" ({day})" if day else "")
            self.progress.update(self.overall, description=f"demo {label}: {stage}")
        return time.perf_counter()

    def done(self, stage: str, started: float, description: str | None = None) -> None:
        self.seconds[stage] += time.perf_counter() - started
        if self.progress is not None:
            task = self.tasks[stage]
            self.progress.advance(task)
            if description:
                self.progress.update(task, description=f"  {description}")

    def day_done(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.overall)


def _metadata(result: dg.ExecuteInProcessResult, asset_name: str) -> dict[str, Any]:
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key.path[-1] == asset_name:
            return {k: v.value for k, v in materialization.metadata.items()}
    return {}


def run_demo(
    settings: Settings,
    *,
    days: int,
    contacts: int,
    seed: int,
    drift_day: int | None = None,
    retrain_every: int = 7,
    progress: Progress | None = None,
    report: bool = True,
    log_level: str = "INFO",
) -> dict[str, Any]:
    """Simulate ``days`` days and run the loop for each through Dagster, then (``report``)
    write the HTML report.

    Returns what ran, per day (events, decisions by action, CRM tasks, drift share, retrains
    with what triggered them, run ids, seconds) and at the end (scoreboard, totals, the
    policy's margin against the oracle and the baselines, the report's path, seconds in total
    and per stage). ``log_level`` is the level of the runs' console log (every event is
    stored in the Dagster instance whatever it is).
    """
    from journey_pipeline.definitions import defs
    from journey_pipeline.resources import JourneyResource
    from journey_pipeline.sim.run import simulate

    instance = dagster_instance(settings)
    daily, analysis, retrain = (defs.get_job_def(n) for n in (DAILY_JOB, ANALYSIS_JOB, RETRAIN_JOB))
    drift_sensor = defs.get_sensor_def("drift_retrain_sensor")
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    sensor_cursor: str | None = None
    started = time.perf_counter()
    per_day: list[dict[str, Any]] = []
    stages = _StageProgress(progress, days)
    retrains = 0
    for index in range(days):
        day_started = clock = stages.start(index, None, "simulate")
        sim = simulate(settings, days=1, contacts=contacts, seed=seed, drift_day=drift_day)
        day = str(sim["last_date"])
        stages.done("simulate", clock)
        clock = stages.start(index, day, "daily loop")
        loop = daily.execute_in_process(instance=instance, partition_key=day, run_config=run_config)
        stages.done("daily loop", clock)
        ingest, decided = _metadata(loop, "raw_events"), _metadata(loop, "decisions")
        writeback = _metadata(loop, "crm_writeback")
        online = _metadata(loop, "online_features")
        row: dict[str, Any] = {
            **_feature_status(loop, online, day),
            "day": day,
            "events": int(ingest.get("accepted", 0)),
            "dead_lettered": int(ingest.get("dead_lettered", 0)),
            "tasks_applied": int(sim["tasks_applied"]),
            "decisions": int(decided.get("live_decisions_inserted", 0)),
            "by_action": decided.get("decisions_by_action", {}),
            "crm_confirmed": int(writeback.get("dispatch_confirmed", 0)),
            "champion": decided.get("champion_version"),
            "run_id": loop.run_id,
            "retrain": None,
        }
        clock = stages.start(index, day, "analysis + drift sensor")
        checks = analysis.execute_in_process(instance=instance, run_config=run_config)
        drift = _metadata(checks, "drift_report")
        row["drift_share"] = drift.get("drift_share")
        with dg.build_sensor_context(
            instance=instance, cursor=sensor_cursor, resources={"journey": JourneyResource()}
        ) as context:
            request = drift_sensor(context)
            sensor_cursor = context.cursor
        stages.done("analysis + drift sensor", clock)
        clock = stages.start(index, day, "retrain")
        if isinstance(request, dg.RunRequest):
            tags = {
                **request.tags,
                "dagster/sensor_name": drift_sensor.name,
                "dagster/run_key": request.run_key,
                DEMO_DAY_TAG: day,
            }
            row["retrain"] = _retrain(retrain, instance, tags, "drift", settings, run_config)
        elif retrain_every and (index + 1) % retrain_every == 0:
            tags = {TRIGGER_TAG: "weekly", DEMO_DAY_TAG: day}
            row["retrain"] = _retrain(retrain, instance, tags, "weekly", settings, run_config)
        retrains += bool(row["retrain"])
        stages.done("retrain", clock, f"retrain ({retrains} run{'s' if retrains != 1 else ''})")
        row["seconds"] = round(time.perf_counter() - day_started, 1)
        per_day.append(row)
        stages.day_done()
    scoreboard_path = settings.reports_dir / "scoreboard.parquet"
    scoreboard = []
    if scoreboard_path.exists():
        import pandas as pd

        scoreboard = json.loads(pd.read_parquet(scoreboard_path).to_json(orient="records"))
    report_path, margins, weekly = None, [], []
    if report:
        from journey_pipeline.demo_report import write_demo_report

        clock = stages.start(days - 1, None, "report")
        measure_decision_latency(settings, seed=seed)
        report_path, data = write_demo_report(settings, instance)
        margins = data["margins"]
        weekly = (data.get("expected") or {}).get("weekly", [])
        stages.done("report", clock)
    return {
        "home": str(settings.home),
        "days": days,
        "contacts": contacts,
        "seed": seed,
        "drift_day": drift_day,
        "per_day": per_day,
        "scoreboard": scoreboard,
        "totals": {
            "events": sum(r["events"] for r in per_day),
            "decisions": sum(r["decisions"] for r in per_day),
            "crm_tasks_confirmed": sum(r["crm_confirmed"] for r in per_day),
            "retrains": sum(1 for r in per_day if r["retrain"]),
        },
        "margins": margins,
        "weekly": weekly,
        "report": str(report_path) if report_path else None,
        "seconds": round(time.perf_counter() - started, 1),
        "stage_seconds": {k: round(v, 1) for k, v in stages.seconds.items()},
    }


def _feature_status(
    result: dg.ExecuteInProcessResult, online: dict[str, Any], day: str
) -> dict[str, Any]:
    """Online feature counts, freshness at the day's close and the parity check's verdict."""
    from datetime import UTC, datetime, timedelta

    newest = online.get("newest_feature_ts")
    freshness = None
    if isinstance(newest, float):
        close = datetime.fromisoformat(day).replace(tzinfo=UTC) + timedelta(days=1)
        freshness = round((close - datetime.fromtimestamp(newest, UTC)).total_seconds() / 3600, 1)
    parity = [
        e.passed
        for e in result.get_asset_check_evaluations()
        if e.check_name == "online_features_parity"
    ]
    return {
        "feature_contacts": int(online.get("contacts", 0)),
        "online_rows_written": int(online.get("rows_written", 0)),
        "feature_freshness_hours": freshness,
        "parity": "pass" if parity and all(parity) else ("fail" if parity else "not run"),
    }


def _retrain_label(retrain: dict[str, Any] | None) -> str:
    if not retrain:
        return ""
    if not retrain.get("challenger"):
        return f"{retrain['trigger']}: cold start"
    return f"{retrain['trigger']}: v{retrain['challenger']}, champion v{retrain['champion']}"


def _retrain(
    job,
    instance,
    tags: dict[str, str],
    trigger: str,
    settings: Settings,
    run_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the retrain job; report the challenger it registered and the champion after it."""
    from journey_pipeline.decide import registry

    run = job.execute_in_process(
        instance=instance, tags=tags, raise_on_error=False, run_config=run_config
    )
    client = registry.configure_mlflow(settings)
    return {
        "trigger": trigger,
        "run_id": run.run_id,
        "success": run.success,
        "challenger": _metadata(run, "reward_model").get("challenger_version"),
        "champion": registry.alias_version(client, registry.CHAMPION),
    }


def render_margins(summary: dict[str, Any]) -> Table | None:
    """The policy's incremental margin against the oracle and the baselines (the rows of
    :func:`journey_pipeline.demo_report.margin_rows`), or None when nothing could be
    evaluated yet."""
    rows = summary.get("margins") or []
    if not rows:
        return None
    table = Table(title="incremental margin against no_offer (USD)")
    for column in ("policy", "margin", "share of oracle", "decisions", "basis"):
        table.add_column(column, justify="left" if column in ("policy", "basis") else "right")
    for row in rows:
        margin, share = row["incremental_margin"], row["share_of_oracle"]
        table.add_row(
            row["policy"],
            "-" if margin is None else f"{margin:,.2f}",
            "-" if share is None else f"{100 * share:.1f}%",
            f"{row['decisions']:,}",
            row["basis"],
        )
    return table


def render_weekly(summary: dict[str, Any]) -> Table | None:
    """The policy's share of the oracle week by week, beside the best static action's, with
    the model versions that decided (:func:`journey_pipeline.demo_report.weekly_rows`), or
    None when nothing could be evaluated yet."""
    from journey_pipeline.demo_report import weekly_rows

    rows = weekly_rows(summary.get("weekly") or [])
    if not rows:
        return None
    table = Table(title="share of the oracle's incremental margin, week by week")
    for column in rows[0]:
        table.add_column(column, justify="right" if column == "decisions" else "left")
    for row in rows:
        table.add_row(*(f"{v:,}" if isinstance(v, int) else v for v in row.values()))
    return table


def render_summary(summary: dict[str, Any]) -> Table:
    """Per-day table for the terminal."""
    table = Table(title=f"journey demo: {summary['days']} days, {summary['contacts']:,} contacts")
    columns = (
        "day",
        "events",
        "features",
        "fresh h",
        "parity",
        "decisions",
        "offers",
        "CRM tasks",
        "drift",
        "retrain",
        "s",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for row in summary["per_day"]:
        offers = sum(v for k, v in row["by_action"].items() if k != "no_offer")
        drift = row.get("drift_share")
        retrain = row["retrain"]
        freshness = row["feature_freshness_hours"]
        table.add_row(
            row["day"],
            f"{row['events']:,}",
            f"{row['feature_contacts']:,}",
            "-" if freshness is None else f"{freshness:g}",
            row["parity"],
            f"{row['decisions']:,}",
            f"{offers:,}",
            f"{row['crm_confirmed']:,}",
            f"{drift:.2f}" if isinstance(drift, float) else "-",
            _retrain_label(retrain),
            f"{row['seconds']:.0f}",
        )
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in summary.get("stage_seconds", {}).items())
    table.caption = (
        f"{summary['seconds']} s ({stages}); state in {summary['home']}; runs visible in `make ui`"
    )
    return table


LATENCY_FILE = "decision_latency.parquet"


def measure_decision_latency(
    settings: Settings, *, probes: int = 300, warmup: int = 20, seed: int = 0
) -> Path | None:
    """Time ``probes`` one-contact decisions through the real-time path of ``journey serve``
    (:meth:`DecisionService.decide_many`: online feature read, the served policy, the
    explanation), one request at a time, for contacts the run decided for; nothing is logged
    or sent (``record=False``). The first ``warmup`` calls are not kept. Writes
    ``reports/decision_latency.parquet`` (probe, contact_id, ms, model_version) and returns
    its path, or None when there is nothing to probe (no decision yet, no online store).
    """
    import duckdb
    import numpy as np
    import pandas as pd

    from journey_pipeline.serve.core import (
        DecisionRequest,
        DecisionService,
        ServiceConfig,
        ServiceNotReady,
    )
    from journey_pipeline.warehouse import warehouse

    try:
        with warehouse(settings.warehouse_path, read_only=True) as con:
            known = [
                row[0]
                for row in con.execute(
                    "SELECT DISTINCT contact_id FROM decide.decision_log ORDER BY contact_id"
                ).fetchall()
            ]
    except duckdb.CatalogException:  # no decision log yet
        return None
    if not known:
        return None
    rng = np.random.default_rng([seed, 7])
    contacts = rng.choice(known, size=probes + warmup, replace=True)
    service = DecisionService(settings, ServiceConfig(mode="shadow", allow_cold_start=True))
    try:
        service.start(background=False)
        rows = []
        for i, contact_id in enumerate(contacts):
            request = DecisionRequest(
                str(contact_id), trigger_event_id=f"latency-probe-{i}", trigger_type="probe"
            )
            started = time.perf_counter()
            (answer,) = service.decide_many([request], record=False)
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            if i >= warmup:
                rows.append((i - warmup, str(contact_id), elapsed_ms, answer["model_version"]))
    except ServiceNotReady:
        return None
    finally:
        service.close()
    path = settings.reports_dir / LATENCY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["probe", "contact_id", "ms", "model_version"]).to_parquet(path)
    return path
