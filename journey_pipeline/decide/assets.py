"""Decide: score triggered contacts, train reward models, gate promotions (thin wrappers)."""

import time
from datetime import date

import dagster as dg
from pydantic import Field

from journey_pipeline.decide import control, registry
from journey_pipeline.decide.bandit import DEFAULT_PESSIMISM
from journey_pipeline.decide.reward_model import TrainingConfig, train_reward_models
from journey_pipeline.decide.scoring import day_triggers, labelled_decisions, score_day
from journey_pipeline.features.contract import MODEL_FEATURES
from journey_pipeline.features.feature_store import build_store, online_features, training_set
from journey_pipeline.learn.analysis import drift_history_onset
from journey_pipeline.partitions import daily_partitions
from journey_pipeline.resources import JourneyResource
from journey_pipeline.warehouse import record_timing, warehouse


@dg.asset(
    group_name="decide",
    partitions_def=daily_partitions,
    deps=[dg.AssetKey("raw_events"), dg.AssetKey("online_features")],
    kinds={"lightgbm", "duckdb"},
    tags={"journey/warehouse": "writer"},
    pool="warehouse",
    description=(
        "The day's triggered contacts (cart abandoned, lifecycle became opportunity) scored "
        "with online features by the champion policy (live) and the challenger (shadow), "
        "appended to decide.decision_log with propensity, holdout flag, rules and explanation."
    ),
)
def decisions(context: dg.AssetExecutionContext, journey: JourneyResource) -> dg.MaterializeResult:
    settings = journey.settings()
    day = date.fromisoformat(context.partition_key)
    store = build_store(settings)
    with warehouse(settings.warehouse_path) as con:
        triggers = day_triggers(con, day)
        started = time.perf_counter()
        contexts = online_features(store, triggers["contact_id"].unique().tolist())
        report = score_day(settings, con, day, contexts, triggers)
        record_timing(
            con, "decide", context.partition_key, time.perf_counter() - started, len(triggers)
        )
    return dg.MaterializeResult(
        metadata={**report.as_metadata(), "dagster/row_count": report.triggers}
    )


class TrainingAssetConfig(dg.Config):
    min_labelled_decisions: int = Field(
        default=1000,
        description="Below this many matured outcomes the policy keeps exploring uniformly.",
    )
    validation_days: float = Field(
        default=3.0,
        description=(
            "With crossfit_folds=0: latest days of matured decisions held out for validation "
            "(the rest trains)."
        ),
    )
    training_days: float | None = Field(
        default=28.0,
        description=(
            "Sliding training window: only decisions of the last N days before the newest "
            "matured one train and validate, so a retrain after a change in the customers "
            "learns the new regime instead of averaging it with the old; null keeps all."
        ),
    )
    since_drift: bool = Field(
        default=True,
        description=(
            "After a drift report crossed the retrain threshold, train only on decisions "
            "taken since the drift's onset (its first drifted feature day), once there are "
            "min_regime_decisions of them."
        ),
    )
    min_regime_decisions: int = Field(
        default=1000,
        description="Matured decisions since the drift onset needed to train on them alone.",
    )
    crossfit_folds: int = Field(
        default=5,
        description=(
            "Validate by blocked cross-fitting over this many consecutive time blocks: every "
            "decision of the window judges the policy once, out of fold; 0 validates on the "
            "latest validation_days instead."
        ),
    )
    num_boost_round: int = Field(default=100, description="LightGBM boosting rounds.")
    pessimism: float = Field(
        default=DEFAULT_PESSIMISM,
        description=(
            "Standard deviations of the ensemble's estimate of an action's advantage over "
            "no_offer taken off its value before choosing: an offer is sent where the model is "
            "confident it pays, not merely where its noisy estimate is highest; 0 turns it off."
        ),
    )
    seed: int = 0


@dg.asset(
    group_name="decide",
    deps=[dg.AssetKey("outcomes"), dg.AssetKey("online_features")],
    kinds={"feast", "lightgbm", "mlflow"},
    description=(
        "Trains the reward models (LightGBM: a pooled baseline and per-action corrections) on "
        "matured decisions joined point-in-time with their features through Feast, logs the "
        "run to MLflow and registers the policy as the new `challenger`. Under cold start (too few outcomes) it registers nothing."
    ),
)
def reward_model(
    context: dg.AssetExecutionContext, config: TrainingAssetConfig, journey: JourneyResource
) -> dg.MaterializeResult:
    settings = journey.settings()
    with warehouse(settings.warehouse_path) as con:
        labelled = labelled_decisions(con)
    if len(labelled) < config.min_labelled_decisions:
        context.log.info(f"cold start: {len(labelled)} labelled decisions")
        return dg.MaterializeResult(
            metadata={
                "labelled_decisions": len(labelled),
                "status": f"cold start: {len(labelled)} < {config.min_labelled_decisions} "
                "labelled decisions, nothing registered",
            }
        )
    frame = training_set(
        build_store(settings), labelled.rename(columns={"decided_at": "event_timestamp"})
    ).rename(columns={"event_timestamp": "decided_at"})
    # Nullable integers (missing = never purchased, ...) become NaN floats: what LightGBM
    # reads as missing, and what the model signature can describe.
    frame[MODEL_FEATURES] = frame[MODEL_FEATURES].astype("float64")
    champion, champion_version = registry.load_policy_model(registry.CHAMPION, settings)
    result = train_reward_models(
        frame,
        TrainingConfig(
            validation_days=config.validation_days,
            training_days=config.training_days,
            regime_start=drift_history_onset(settings.reports_dir) if config.since_drift else None,
            min_regime_rows=config.min_regime_decisions,
            crossfit_folds=config.crossfit_folds,
            num_boost_round=config.num_boost_round,
            seed=config.seed,
            bandit_options={**TrainingConfig().bandit_options, "pessimism": config.pessimism},
        ),
        champion=champion,
        champion_trained_until=registry.trained_until(champion_version, settings),
    )
    run = registry.log_training_run(result, settings, run_name=f"retrain {context.run_id[:8]}")
    metrics = {k: float(v) for k, v in result.metrics.items() if v is not None}
    return dg.MaterializeResult(
        metadata={
            "labelled_decisions": len(labelled),
            "challenger_version": run.version,
            "champion_version": champion_version or "none",
            "training_regime": result.data_window["regime"],
            "validation": result.data_window["validation"],
            "mlflow_run": dg.MetadataValue.url(registry.run_url(run.run_id, settings)),
            "mlflow_run_id": run.run_id,
            **{f"metric/{k}": v for k, v in metrics.items()},
        }
    )


@dg.asset_check(
    asset=reward_model,
    blocking=True,
    description=(
        "Promotion gate: the challenger must pass absolute sanity checks and, when a champion "
        "exists, not regress AUC/log loss and show a positive off-policy uplift over the "
        "champion on the same validation decisions (paired interval)."
    ),
)
def challenger_beats_champion(journey: JourneyResource) -> dg.AssetCheckResult:
    settings = journey.settings()
    client = registry.configure_mlflow(settings)
    challenger = registry.alias_version(client, registry.CHALLENGER)
    champion = registry.alias_version(client, registry.CHAMPION)
    if challenger is None:
        return dg.AssetCheckResult(
            passed=True, metadata={"status": "no challenger yet (cold start)"}
        )
    if challenger == champion:
        return dg.AssetCheckResult(
            passed=True, metadata={"status": f"v{challenger} is already champion"}
        )
    result = registry.gate(challenger, champion, settings=settings)
    return dg.AssetCheckResult(
        passed=result.passed,
        metadata={
            "challenger": challenger,
            "champion": champion or "none",
            "gate": dg.MetadataValue.md(result.markdown()),
        },
    )


@dg.asset(
    group_name="decide",
    deps=[reward_model],
    kinds={"mlflow"},
    description=(
        "Moves the `champion` alias to the challenger. Runs only when the blocking promotion "
        "gate on reward_model passed."
    ),
)
def champion_model(
    context: dg.AssetExecutionContext, journey: JourneyResource
) -> dg.MaterializeResult:
    settings = journey.settings()
    client = registry.configure_mlflow(settings)
    challenger = registry.alias_version(client, registry.CHALLENGER)
    champion = registry.alias_version(client, registry.CHAMPION)
    if challenger is None or challenger == champion:
        return dg.MaterializeResult(
            metadata={"champion_version": champion or "none", "changed": False}
        )
    event = control.promote(
        settings,
        challenger,
        who=f"dagster run {context.run_id[:8]}",
        why="passed the promotion gate",
    )
    return dg.MaterializeResult(
        metadata={
            **{k: str(v) for k, v in event.items()},
            "champion_version": challenger,
            "changed": True,
        }
    )


decide_assets = [decisions, reward_model, champion_model]
decide_checks = [challenger_beats_champion]
