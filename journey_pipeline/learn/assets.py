"""Learn: outcomes, experiment analysis, drift (thin Dagster wrappers)."""

from datetime import date

import dagster as dg
import pandas as pd
from pydantic import Field

from journey_pipeline.learn.analysis import (
    DRIFT_SHARE_THRESHOLD,
    baseline_policy_values,
    champion_outcomes,
    check_drift,
    outcome_frame,
    outcome_rebuild_range,
)
from journey_pipeline.learn.experiment import analyse, plot_daily_lift
from journey_pipeline.learn.guardrails import evaluate_guardrail
from journey_pipeline.learn.outcomes import build_outcomes
from journey_pipeline.learn.scoreboard import build_scoreboard, plot_scoreboard, scoreboard_frame
from journey_pipeline.partitions import daily_partitions
from journey_pipeline.resources import JourneyResource
from journey_pipeline.warehouse import warehouse


class OutcomesConfig(dg.Config):
    attribution_window_days: int = Field(
        default=7, description="Revenue within this many days after a decision is credited to it."
    )


@dg.asset(
    group_name="learn",
    partitions_def=daily_partitions,
    deps=[dg.AssetKey("raw_events"), dg.AssetKey("crm_writeback")],
    kinds={"duckdb"},
    tags={"journey/warehouse": "writer"},
    pool="warehouse",
    description=(
        "Outcomes of live decisions: payments of the contact within the attribution window, "
        "offer opens/clicks by decision_id, reward = revenue - action cost. Each partition "
        "rebuilds every decision whose window its day can still change (late outcomes update "
        "earlier days); unmatched outcome events are counted, not dropped."
    ),
)
def outcomes(
    context: dg.AssetExecutionContext, config: OutcomesConfig, journey: JourneyResource
) -> dg.MaterializeResult:
    settings = journey.settings()
    day = date.fromisoformat(context.partition_key)
    window = config.attribution_window_days
    start, end, close = outcome_rebuild_range(day, window)
    with warehouse(settings.warehouse_path) as con:
        report = build_outcomes(con, start, end, window, as_of=close)
    return dg.MaterializeResult(
        metadata={
            "decision_dates": f"{start}..{end}",
            "decisions": report.decisions,
            "matured": report.matured,
            "immature": report.immature,
            "revenue": round(report.revenue, 2),
            "reward": round(report.reward, 2),
            "unattributed_payments": report.unattributed_payments,
            "unmatched_outcome_events": dg.MetadataValue.json(report.unmatched_by_reason),
            "unknown_actions": report.unknown_actions,
        }
    )


@dg.asset(
    group_name="learn",
    deps=[outcomes],
    kinds={"duckdb"},
    description=(
        "Incremental margin, revenue and conversion of the policy against the persistent "
        "holdout (overall, per action arm, per lifecycle cohort) with always-valid confidence "
        "sequences beside fixed-horizon intervals, plus the off-policy value of uniform random "
        "and each static action from the logged propensities."
    ),
)
def experiment_analysis(journey: JourneyResource) -> dg.MaterializeResult:
    settings = journey.settings()
    with warehouse(settings.warehouse_path, read_only=True) as con:
        frame = outcome_frame(con)
    if frame.empty:
        return dg.MaterializeResult(
            metadata={"status": "no data: no live decisions with outcomes yet"}
        )
    analysis = analyse(frame)
    settings.reports_dir.mkdir(parents=True, exist_ok=True)
    plot_path = settings.reports_dir / "daily_lift.png"
    plot_daily_lift(analysis, plot_path)
    analysis.daily.to_parquet(settings.reports_dir / "experiment_daily.parquet")
    analysis.summary.to_parquet(settings.reports_dir / "experiment_summary.parquet")
    baselines = baseline_policy_values(frame)
    overall = analysis.overall("margin_per_user")
    return dg.MaterializeResult(
        metadata={
            "decisions": len(frame),
            "excluded": dg.MetadataValue.json(analysis.excluded),
            "margin_per_user_lift": float(overall["lift"]),
            "lift_cs_low": float(overall["cs_low"]),
            "lift_cs_high": float(overall["cs_high"]),
            "analysis": dg.MetadataValue.md(analysis.to_markdown()),
            "baseline_policy_values": dg.MetadataValue.md(
                baselines.to_markdown(index=False, floatfmt=".4g") if len(baselines) else "no data"
            ),
            "daily_lift_plot": dg.MetadataValue.path(str(plot_path)),
        }
    )


@dg.asset(
    group_name="learn",
    deps=[dg.AssetKey("online_features"), dg.AssetKey("champion_model")],
    kinds={"evidently"},
    description=(
        "Evidently DataDriftPreset between the champion's training window of features and the "
        "newest feature day, on the customer features whose look-back window is full in the "
        "reference (windowed counts filling up from an empty history are not drift); drift "
        "share and per-column scores as metadata, HTML report under JOURNEY_HOME/reports."
    ),
)
def drift_report(journey: JourneyResource) -> dg.MaterializeResult:
    settings = journey.settings()
    windows, result = check_drift(settings)
    skipped = windows.get("reason") or (result.skipped_reason if result is not None else None)
    html = settings.reports_dir / "drift_report.html"
    warm = windows.get("warming_up", {})
    metadata: dict[str, object] = {
        "skipped_reason": skipped or "",
        "current_window": windows.get("current_window") or "",
        "reference_window": windows.get("reference_window") or "",
        "compared_features": ", ".join(windows.get("features", [])) or "none",
        "reference_moved": windows.get("reference_moved", "no"),
        "warming_up": dg.MetadataValue.md(
            "\n".join(f"- {k}: {v}" for k, v in warm.items()) or "none"
        ),
    }
    if result is not None:
        metadata.update({k: v for k, v in result.as_metadata().items() if v is not None})
        metadata["skipped_reason"] = skipped or ""
        metadata["per_column_scores"] = dg.MetadataValue.md(result.scores_markdown())
    written = result is not None and result.html_path is not None
    metadata["report"] = dg.MetadataValue.path(str(html)) if written else "not written"
    return dg.MaterializeResult(metadata=metadata)


@dg.asset_check(asset=drift_report, description="Feature drift share below the retrain threshold.")
def drift_share_below_threshold(journey: JourneyResource) -> dg.AssetCheckResult:
    settings = journey.settings()
    history = settings.reports_dir / "drift_history.parquet"
    if not history.exists():
        return dg.AssetCheckResult(passed=True, metadata={"status": "no drift report yet"})
    last = pd.read_parquet(history).iloc[-1]
    share = last["drift_share"]
    threshold = DRIFT_SHARE_THRESHOLD
    if share is None or pd.isna(share):
        return dg.AssetCheckResult(passed=True, metadata={"skipped": str(last["skipped_reason"])})
    return dg.AssetCheckResult(
        passed=bool(share < threshold),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"drift_share": float(share), "threshold": threshold},
    )


class GuardrailConfig(dg.Config):
    max_margin_loss_per_user: float = Field(
        default=0.5,
        description=(
            "Roll back when the champion's margin per user is, with confidence (upper bound of "
            "the always-valid interval), below the holdout's by more than this."
        ),
    )
    min_conversion_lift: float | None = Field(
        default=None, description="Optional business threshold on the conversion lift."
    )


@dg.asset(
    group_name="learn",
    deps=[experiment_analysis],
    kinds={"mlflow"},
    tags={"journey/warehouse": "writer"},
    description=(
        "Guardrail on the live champion: if it loses margin against the holdout with confidence "
        "(or a business threshold breaks), roll the champion back to the previous version, or "
        "pause autonomy when there is none. Every verdict and action is recorded."
    ),
)
def guardrail(
    context: dg.AssetExecutionContext, config: GuardrailConfig, journey: JourneyResource
) -> dg.MaterializeResult:
    from journey_pipeline.decide import control, registry

    settings = journey.settings()
    champion = registry.alias_version(registry.configure_mlflow(settings), registry.CHAMPION)
    with warehouse(settings.warehouse_path, read_only=True) as con:
        frame = champion_outcomes(outcome_frame(con), champion)
    if frame.empty:
        return dg.MaterializeResult(metadata={"verdict": "no data for the live policy yet"})
    thresholds = (
        {"conversion_lift": {"min": config.min_conversion_lift}}
        if config.min_conversion_lift is not None
        else None
    )
    verdict = evaluate_guardrail(analyse(frame), config.max_margin_loss_per_user, thresholds)
    metadata = {
        "champion_version": champion or "none (cold start)",
        "breach": verdict.breach,
        "reasons": "; ".join(verdict.reasons) or "none",
        "notes": "; ".join(verdict.notes) or "none",
    }
    if verdict.breach and champion is None:
        metadata["action_taken"] = "none: cold-start exploration has no version to roll back"
    elif verdict.breach:
        event = control.rollback(settings, who="guardrail", why="; ".join(verdict.reasons))
        context.log.warning(f"guardrail breached, {event['action']}: {event}")
        metadata["action_taken"] = dg.MetadataValue.json({k: str(v) for k, v in event.items()})
    return dg.MaterializeResult(metadata=metadata)


class ScoreboardConfig(dg.Config):
    price_per_vcpu_hour: float = Field(
        default=0.05, description="Compute price used for cost per 1M events."
    )
    vcpus: int = Field(default=2, description="vCPUs the loop runs on.")


@dg.asset(
    group_name="learn",
    deps=[experiment_analysis, drift_report],
    description=(
        "North-star metrics (incremental margin per user, conversion lift, retention) and SLOs "
        "(decision latency, feature freshness, calibration error, event lag, cost per 1M "
        "events), all measured by the loop, as one Markdown table and one PNG."
    ),
)
def scoreboard(
    context: dg.AssetExecutionContext, config: ScoreboardConfig, journey: JourneyResource
) -> dg.MaterializeResult:
    from journey_pipeline.decide import registry

    settings = journey.settings()
    champion = registry.alias_version(registry.configure_mlflow(settings), registry.CHAMPION)
    ece = registry.version_metrics(champion, settings).get("ece") if champion else None
    loop_seconds = sum(
        (r.end_time - r.start_time)
        for r in context.instance.get_run_records(
            dg.RunsFilter(job_name="daily_loop_job", statuses=[dg.DagsterRunStatus.SUCCESS])
        )
        if r.end_time and r.start_time
    )
    with warehouse(settings.warehouse_path, read_only=True) as con:
        frame = outcome_frame(con)
        exp = analyse(frame).metrics() if len(frame) else None
        metrics = build_scoreboard(
            con,
            exp,
            ece,
            loop_seconds or None,
            price_per_vcpu_hour=config.price_per_vcpu_hour,
            vcpus=config.vcpus,
        )
    table = scoreboard_frame(metrics)
    png = settings.reports_dir / "scoreboard.png"
    plot_scoreboard(metrics, png)
    table.to_parquet(settings.reports_dir / "scoreboard.parquet")
    return dg.MaterializeResult(
        metadata={
            "scoreboard": dg.MetadataValue.md(table.to_markdown(index=False, floatfmt=".4g")),
            "plot": dg.MetadataValue.path(str(png)),
            **{m.name: m.value for m in metrics if m.value is not None},
        }
    )


learn_assets = [outcomes, experiment_analysis, drift_report, guardrail, scoreboard]
learn_checks = [drift_share_below_threshold]
