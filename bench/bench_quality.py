"""Decision quality on the simulator: the policy against the oracle and three baselines.

Runs the real loop in a temporary JOURNEY_HOME: simulate a day, ingest its events, build the
features with dbt, materialize them online with Feast, decide (champion live, challenger
shadow), write the offers back to the local CRM, build outcomes, check drift (Evidently, as
the ``drift_report`` asset; a retrain after a detected drift learns from the new regime only,
as the retrain job does), and retrain every 7 days through the promotion gate. ``--engine plain`` (the default) calls the functions the Dagster
assets wrap, with one ``dbt build`` a day; ``--engine dagster`` runs the same days through
``journey_pipeline.demo.run_demo`` (the daily job, the analysis job and the retrain sensor),
which is several times slower because every day starts three dbt processes. Then it
evaluates every live, non-holdout decision with the simulator's oracle
(:func:`journey_pipeline.learn.regret.policy_regret`): the policy's expected incremental
margin against ``no_offer`` as a share of the oracle's (target >= 70%), compared on exactly
the same triggered contacts with

- uniform random (its exact expectation),
- the best static action (chosen in hindsight, so an upper bound for any static rule),
- Vowpal Wabbit ``--cb_explore_adf``, replayed on the same log: each day it learns from the
  logged decisions whose 7-day window has closed by then (contract features, logged action,
  cost = -reward, logged propensity) and picks actions for that day's decisions from the same
  contract features the policy saw (the mart row with feature_date = the decision's date).
  Where a business rule forced the policy's action (frequency cap, churned, fallback), Vowpal
  Wabbit gets the same action, so the two learners are compared under the same rules.

Besides the whole run (cold start included), two views of what was learnt: the share over the
decisions a trained model took and over the last 7 days, and an *information ceiling*: LightGBM
fitted to the oracle's own margins (no reward noise, no exploration) on the first half of the
days, acting on the second half, i.e. how much of the oracle the contract features can explain.
And every registered model version, promoted or not, judged by the oracle on the decisions of
the last 14 days: whether the promotion gate kept the better model.

The baselines are measured in the same run; printed are the policy's share of the oracle, its
difference to every baseline and the ratio policy / baseline where the baseline earns a positive
margin (a ratio to a loss means nothing). Plots of the cumulative incremental margin and of
the regret are saved as PNG.

Usage: ``python bench/bench_quality.py [--quick] [--days N] [--contacts N] [--seed S]
[--drift-day D] [--retrain-every N] [--validation-days D] [--pessimism K]
[--engine plain|dagster] [--home DIR] [--out DIR] [--keep]``; ``--home`` evaluates the run
already in that JOURNEY_HOME instead of running the loop.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from journey_pipeline.actions import ACTION_NAMES
from journey_pipeline.decide.bandit import DEFAULT_PESSIMISM
from journey_pipeline.features.contract import ENTITY_KEY, MODEL_FEATURES
from journey_pipeline.learn.regret import (
    BANDIT_RULE,
    COLD_START,
    ORACLE,
    POLICY,
    UNIFORM,
    RegretReport,
    load_regret_report,
    oracle_calibration,
    plot_cumulative,
    plot_regret,
    weekly_shares,
)
from journey_pipeline.settings import Settings, load_settings

TARGET_SHARE = 0.70
VW = "vowpal_wabbit"
WINDOW_DAYS = 7
# Margins are in currency units (orders around 70); VW's squared-loss regressors learn on
# costs of order one.
COST_SCALE = 100.0
VW_ARGS = "--cb_explore_adf --epsilon 0.05 -q sa --quiet"
# The retrain job's defaults (decide.assets.TrainingAssetConfig and the demo's weekly retrain).
# A 7-day validation window would hold every matured decision of the first retrain (day 14
# has matured outcomes for days 1-6 only), leaving nothing to train on.
MIN_LABELLED = 1000
RETRAIN_EVERY = 7
VALIDATION_DAYS = 3.0
TRAINING_DAYS = 28.0


# ------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------


def _enter_home(home: Path) -> Settings:
    """Point JOURNEY_HOME (and DAGSTER_HOME inside it) at ``home``; out: its settings."""
    os.environ["JOURNEY_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    settings = load_settings()
    settings.ensure_dirs()
    return settings


def run_loop_dagster(home: Path, days: int, contacts: int, seed: int) -> dict[str, Any]:
    """The closed loop through Dagster (``run_demo``) for ``days`` days on ``contacts``
    contacts in JOURNEY_HOME ``home``. Out: the demo's summary."""
    settings = _enter_home(home)
    from journey_pipeline.demo import run_demo

    return run_demo(settings, days=days, contacts=contacts, seed=seed)


def _dbt_build(settings: Settings, day: date) -> None:
    """One ``dbt build`` of every feature model for partition ``day`` (feature date day + 1):
    staging and intermediate views, the incremental mart and its Parquet export, with tests."""
    from journey_pipeline.features.dbt_args import dbt_build_args, partition_window_vars
    from journey_pipeline.features.dbt_assets import DBT_PROJECT_DIR, dbt_executable

    dbt_vars = partition_window_vars(day, day + timedelta(days=1))
    command = [
        dbt_executable(),
        *dbt_build_args(dbt_vars),
        "--project-dir",
        str(DBT_PROJECT_DIR),
        "--profiles-dir",
        str(DBT_PROJECT_DIR),
        "--target",
        "local",
        # Its own target and log folders: other dbt runs on the same project stay untouched.
        "--target-path",
        str(settings.home / "dbt" / "target"),
        "--log-path",
        str(settings.home / "dbt" / "logs"),
        "--quiet",
    ]
    done = subprocess.run(command, env=os.environ.copy(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"dbt build for {day} failed:\n{done.stdout[-3000:]}{done.stderr[-2000:]}"
        )


def _retrain(
    settings: Settings, seed: int, validation_days: float, pessimism: float
) -> dict[str, Any]:
    """Retrain as the retrain job does: reward models on matured outcomes through the Feast
    training set, a challenger in MLflow, promoted only if the promotion gate passes."""
    from journey_pipeline.decide import registry
    from journey_pipeline.decide.reward_model import TrainingConfig, train_reward_models
    from journey_pipeline.decide.scoring import labelled_decisions
    from journey_pipeline.features.feature_store import build_store, training_set
    from journey_pipeline.learn.analysis import drift_history_onset
    from journey_pipeline.warehouse import warehouse

    with warehouse(settings.warehouse_path) as con:
        labelled = labelled_decisions(con)
    if len(labelled) < MIN_LABELLED:
        return {"status": "cold start", "labelled": len(labelled)}
    frame = training_set(
        build_store(settings), labelled.rename(columns={"decided_at": "event_timestamp"})
    ).rename(columns={"event_timestamp": "decided_at"})
    # Nullable integer features (NULL = undefined) as float64 with NaN: the models read them
    # as floats anyway, and MLflow cannot build an input example from <NA> in an int column.
    nullable = [c for c in MODEL_FEATURES if c in frame and str(frame[c].dtype)[:3] == "Int"]
    frame[nullable] = frame[nullable].astype("float64")
    champion, champion_version = registry.load_policy_model(registry.CHAMPION, settings)
    try:
        result = train_reward_models(
            frame,
            TrainingConfig(
                validation_days=validation_days,
                training_days=TRAINING_DAYS,
                regime_start=drift_history_onset(settings.reports_dir),
                num_boost_round=100,
                seed=seed,
                bandit_options={**TrainingConfig().bandit_options, "pessimism": pessimism},
            ),
            champion=champion,
            champion_trained_until=registry.trained_until(champion_version, settings),
        )
        run = registry.log_training_run(result, settings, run_name="bench_quality retrain")
    except Exception as exc:  # noqa: BLE001 - recorded and printed, as a failed Dagster run
        # As in the retrain job: a training that cannot run (e.g. every labelled decision
        # falls inside the validation window) fails that run and leaves the champion as is.
        return {
            "status": f"failed: {type(exc).__name__}: {str(exc)[:200]}",
            "labelled": len(labelled),
        }
    verdict = registry.gate(run.version, champion_version, settings=settings)
    if verdict.passed:
        registry.promote(run.version, who="bench_quality", why="passed the gate", settings=settings)
    return {"labelled": len(labelled), "version": run.version, "promoted": verdict.passed}


def outcome_dates(day: date) -> tuple[date, date]:
    """Decision dates whose outcomes partition ``day`` rebuilds: every decision a payment of
    ``day`` can still be credited to, back to the one whose window closes at the end of
    ``day``. A decision dated X (taken at X 00:00) has its window end at X + 7 00:00, and the
    warehouse's clock after ``day`` is its last event (before ``day`` + 1 00:00), so its
    outcome matures in the rebuild of day X + 7; the range starts there, WINDOW_DAYS + 1 days
    before the newest decision date (``day`` + 1). A range one day shorter never rebuilds a
    decision after the day its window closes, so no outcome ever matures."""
    newest = day + timedelta(days=1)
    return newest - timedelta(days=WINDOW_DAYS + 1), newest


def run_loop_plain(
    home: Path,
    days: int,
    contacts: int,
    seed: int,
    validation_days: float = VALIDATION_DAYS,
    retrain_every: int = RETRAIN_EVERY,
    drift_day: int | None = None,
    pessimism: float = DEFAULT_PESSIMISM,
) -> dict[str, Any]:
    """The same loop without Dagster, calling the functions its assets wrap: simulate a day,
    ingest its events, one dbt build, Feast registry and online materialization, decisions
    (champion live, challenger shadow), CRM write-back, outcomes (over :func:`outcome_dates`);
    retrain every ``retrain_every`` days. Out: per-stage seconds and the retrains."""
    settings = _enter_home(home)
    from journey_pipeline.act.writeback import write_back
    from journey_pipeline.decide.scoring import day_triggers, score_day
    from journey_pipeline.features import feature_store as fs
    from journey_pipeline.learn.analysis import check_drift
    from journey_pipeline.learn.outcomes import build_outcomes
    from journey_pipeline.observe.ingest import ingest_files
    from journey_pipeline.observe.landing import landing_files
    from journey_pipeline.sim.run import simulate
    from journey_pipeline.warehouse import warehouse

    seconds: dict[str, float] = {}
    retrains: list[dict[str, Any]] = []

    def timed(stage: str, started: float) -> None:
        seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - started

    for index in range(days):
        t = time.perf_counter()
        day = date.fromisoformat(
            simulate(settings, days=1, contacts=contacts, seed=seed, drift_day=drift_day)[
                "last_date"
            ]
        )
        timed("simulate", t)
        t = time.perf_counter()
        ingest_files(settings.warehouse_path, landing_files(settings.landing_dir, day), settings)
        timed("ingest", t)
        t = time.perf_counter()
        _dbt_build(settings, day)
        timed("dbt", t)
        t = time.perf_counter()
        store = fs.build_store(settings)
        fs.apply_definitions(store, fs.export_path(settings))
        fs.materialize_latest(store, settings)
        timed("feast", t)
        t = time.perf_counter()
        with warehouse(settings.warehouse_path) as con:
            triggers = day_triggers(con, day)
            contexts = fs.online_features(store, triggers["contact_id"].unique().tolist())
            score_day(settings, con, day, contexts, triggers)
        timed("decide", t)
        t = time.perf_counter()
        decided_on = day + timedelta(days=1)
        write_back(settings, decision_date=decided_on, max_batch=500)
        timed("act", t)
        t = time.perf_counter()
        with warehouse(settings.warehouse_path) as con:
            build_outcomes(con, *outcome_dates(day), WINDOW_DAYS)
        timed("outcomes", t)
        t = time.perf_counter()
        check_drift(settings)
        timed("drift", t)
        if (index + 1) % retrain_every == 0:
            t = time.perf_counter()
            retrains.append(
                {"day": day.isoformat(), **_retrain(settings, seed, validation_days, pessimism)}
            )
            timed("retrain", t)
    return {"engine": "plain", "seconds_by_stage": seconds, "retrains": retrains}


# ------------------------------------------------------------------------------------------
# Vowpal Wabbit replay
# ------------------------------------------------------------------------------------------


def contract_features(settings: Settings, decisions: pd.DataFrame) -> pd.DataFrame:
    """The contract features each decision was served: the mart row of its contact with
    ``feature_date`` = the decision's date (its cutoff is the decision time). In: settings
    (where the Parquet export of the mart is) and decisions (decision_id, contact_id,
    decided_at). Out: MODEL_FEATURES columns indexed by decision_id (NaN where undefined)."""
    export = settings.feature_exports_dir / "contact_features_daily.parquet"
    keys = pd.DataFrame(
        {
            "decision_id": decisions["decision_id"].to_numpy(),
            ENTITY_KEY: decisions["contact_id"].to_numpy(),
            "feature_date": pd.to_datetime(decisions["decided_at"]).dt.date.to_numpy(),
        }
    )
    columns = ", ".join(f"f.{name}" for name in MODEL_FEATURES)
    con = duckdb.connect()
    try:
        con.register("decision_keys", keys)
        frame = con.execute(
            f"""
            SELECT k.decision_id, {columns}
            FROM decision_keys k
            LEFT JOIN read_parquet(?) f
              ON f.{ENTITY_KEY} = k.{ENTITY_KEY} AND f.feature_date = k.feature_date
            """,
            [str(export)],
        ).df()
    finally:
        con.close()
    return frame.set_index("decision_id").reindex(decisions["decision_id"])


def _shared_line(features: np.ndarray) -> str:
    parts = [
        f"{name}:{value:.6g}"
        for name, value in zip(MODEL_FEATURES, features, strict=True)
        if np.isfinite(value)
    ]
    return "shared |s " + " ".join(parts)


def _adf_example(features: np.ndarray, label: tuple[int, float, float] | None = None) -> list[str]:
    """Multi-line ADF example: shared contact features, one line per action; ``label`` =
    (index of the logged action, cost, propensity) marks the logged line for learning."""
    lines = [_shared_line(features)]
    for j, action in enumerate(ACTION_NAMES):
        prefix = ""
        if label is not None and label[0] == j:
            prefix = f"0:{label[1]:.6g}:{label[2]:.6g} "
        lines.append(f"{prefix}|a action={action}")
    return lines


def vw_replay(
    evaluated: pd.DataFrame,
    features: pd.DataFrame,
    outcomes: pd.DataFrame,
    seed: int = 0,
) -> tuple[pd.Series, dict[str, Any]]:
    """Replay the decision log day by day with Vowpal Wabbit ``--cb_explore_adf``.

    In: the evaluated (non-holdout) decisions of a :class:`RegretReport` (decision_id,
    decided_at, action, rule), contract features indexed by decision_id, ``learn.outcomes``
    rows (decision_id, decided_at, action, propensity, reward, matured, holdout) and a seed.
    Each day VW first learns from the logged decisions (policy-chosen, non-holdout, matured)
    whose 7-day window closed by that day's decision time, then picks an action for each of the
    day's decisions by sampling its exploration distribution; where a business rule forced the
    logged action, VW's action is the logged one. Out: (Series decision_id -> action,
    figures: examples learnt, decisions picked, seconds).
    """
    from vowpalwabbit import Workspace

    started = time.perf_counter()
    vw = Workspace(f"{VW_ARGS} --random_seed {seed}")
    rng = np.random.default_rng(seed)
    code = {a: j for j, a in enumerate(ACTION_NAMES)}
    log = evaluated.assign(decided_at=pd.to_datetime(evaluated["decided_at"]))
    learnable = outcomes[
        outcomes["matured"].astype(bool)
        & outcomes["reward"].notna()
        & ~outcomes["holdout"].astype(bool)
        & outcomes["decision_id"].isin(log.loc[log["rule"].eq(BANDIT_RULE), "decision_id"])
    ].assign(decided_at=lambda f: pd.to_datetime(f["decided_at"]))
    learnable = learnable.sort_values(["decided_at", "decision_id"]).reset_index(drop=True)
    matrix = features.reindex(log["decision_id"]).to_numpy(dtype=np.float64)
    row_of = {d: i for i, d in enumerate(log["decision_id"])}
    picks: dict[str, str] = {}
    learnt = 0
    try:
        for decided_at, day in log.groupby("decided_at", sort=True):
            # At decision time the warehouse holds events up to just before it, so a window
            # has closed only for decisions taken more than WINDOW_DAYS earlier.
            mature_before = decided_at - timedelta(days=WINDOW_DAYS)
            while learnt < len(learnable) and learnable["decided_at"].iat[learnt] < mature_before:
                row = learnable.iloc[learnt]
                label = (
                    code[row["action"]],
                    -float(row["reward"]) / COST_SCALE,
                    float(row["propensity"]),
                )
                vw.learn(_adf_example(matrix[row_of[row["decision_id"]]], label))
                learnt += 1
            for decision_id, action, rule in zip(
                day["decision_id"], day["action"], day["rule"], strict=True
            ):
                if rule != BANDIT_RULE:
                    picks[decision_id] = action
                    continue
                pmf = np.asarray(vw.predict(_adf_example(matrix[row_of[decision_id]])), float)
                pmf = pmf / pmf.sum()
                picks[decision_id] = ACTION_NAMES[int(rng.choice(len(ACTION_NAMES), p=pmf))]
    finally:
        vw.finish()
    figures = {
        "examples_learnt": learnt,
        "decisions_picked": int(log["rule"].eq(BANDIT_RULE).sum()),
        "seconds": time.perf_counter() - started,
    }
    return pd.Series(picks, name=VW), figures


# ------------------------------------------------------------------------------------------
# What the policy learnt, and what could be learnt
# ------------------------------------------------------------------------------------------

LAST_DAYS = 7


def learned_shares(report: RegretReport) -> dict[str, Any]:
    """The policy once it has a model: the share of the oracle over the decisions a trained
    model took (cold start left out), and over the last ``LAST_DAYS`` application days."""
    evaluated = report.decisions[~report.decisions["holdout"]]
    policy = evaluated[f"incremental_{POLICY}"]
    oracle = evaluated[f"incremental_{ORACLE}"]
    trained = (evaluated["model_version"] != COLD_START).to_numpy()
    last_days = sorted(evaluated["applied_date"].unique())[-LAST_DAYS:]
    recent = evaluated["applied_date"].isin(last_days).to_numpy()

    def share(mask: np.ndarray) -> float | None:
        total = float(oracle[mask].sum())
        return float(policy[mask].sum()) / total if total else None

    return {
        "trained_model_decisions": int(trained.sum()),
        "trained_model_share": share(trained),
        "last_days": len(last_days),
        "last_days_decisions": int(recent.sum()),
        "last_days_share": share(recent),
        "last_days_static": {
            name: float(evaluated.loc[recent, f"incremental_{name}"].sum())
            / max(float(oracle[recent].sum()), 1e-9)
            for name in report.policies
            if name.startswith("static_") or name in (UNIFORM, VW)
        },
    }


def information_ceiling(report: RegretReport, features: pd.DataFrame, seed: int) -> dict[str, Any]:
    """How much of the oracle's margin the contract features can explain at all: per offer, a
    LightGBM regressor is fitted to the oracle's own incremental margins (no outcome noise, no
    exploration) on the first half of the application days, and its best action is taken on
    the second half. No learner that sees only these features and noisy rewards should do
    better; the policy's share on the same second half is printed beside it."""
    import lightgbm as lgb

    evaluated = report.decisions[~report.decisions["holdout"]].reset_index(drop=True)
    days = sorted(evaluated["applied_date"].unique())
    if len(days) < 4:
        return {"share": None, "reason": "fewer than 4 days"}
    test = evaluated["applied_date"].isin(days[len(days) // 2 :]).to_numpy()
    matrix = features.reindex(evaluated["decision_id"]).to_numpy(dtype=np.float64)
    margins = evaluated[[f"margin_{a}" for a in ACTION_NAMES]].to_numpy(dtype=np.float64)
    incremental = margins - margins[:, [ACTION_NAMES.index("no_offer")]]
    params = {
        "objective": "regression",
        "learning_rate": 0.05,
        "num_leaves": 31,
        "min_data_in_leaf": 20,
        "seed": seed,
        "verbose": -1,
    }
    predicted = np.column_stack(
        [
            lgb.train(params, lgb.Dataset(matrix[~test], incremental[~test, j]), 300).predict(
                matrix[test]
            )
            if action != "no_offer"
            else np.zeros(int(test.sum()))
            for j, action in enumerate(ACTION_NAMES)
        ]
    )
    chosen = incremental[test][np.arange(int(test.sum())), predicted.argmax(axis=1)]
    oracle = incremental[test].max(axis=1).sum()
    policy = evaluated.loc[test, f"incremental_{POLICY}"].sum()
    return {
        "train_decisions": int((~test).sum()),
        "test_decisions": int(test.sum()),
        "share": float(chosen.sum() / oracle) if oracle else None,
        "policy_share_same_days": float(policy / oracle) if oracle else None,
    }


def version_shares(
    report: RegretReport, features: pd.DataFrame, settings: Settings, days: int = 14
) -> dict[str, Any]:
    """Every registered model version judged by the oracle on the same decisions: the last
    ``days`` application days, each version acting with its exact action probabilities on
    the features those decisions were served. Shows whether the promotion gate kept the
    better model (promoted or refused, each version is valued on the same contacts). Like
    the oracle, the versions act where a business rule forced the logged action, so their
    shares are above what the policy realises under the frequency cap."""
    import mlflow

    from journey_pipeline.decide import registry

    client = registry.configure_mlflow(settings)
    versions = sorted(
        int(v.version) for v in client.search_model_versions(f"name='{registry.MODEL_NAME}'")
    )
    evaluated = report.decisions[~report.decisions["holdout"]].reset_index(drop=True)
    last = sorted(evaluated["applied_date"].unique())[-days:]
    evaluated = evaluated[evaluated["applied_date"].isin(last)].reset_index(drop=True)
    if not versions or evaluated.empty:
        return {"days": len(last), "decisions": len(evaluated), "shares": {}}
    contexts = features.reindex(evaluated["decision_id"])[list(MODEL_FEATURES)]
    margins = evaluated[[f"margin_{a}" for a in ACTION_NAMES]].to_numpy(dtype=np.float64)
    incremental = margins - margins[:, [ACTION_NAMES.index("no_offer")]]
    oracle = float(incremental.max(axis=1).sum())
    champion = registry.alias_version(client, registry.CHAMPION)
    shares = {}
    for version in versions:
        bandit = (
            mlflow.pyfunc.load_model(f"models:/{registry.MODEL_NAME}/{version}")
            .unwrap_python_model()
            .bandit
        )
        probabilities = bandit.action_probabilities(contexts)[list(ACTION_NAMES)].to_numpy()
        shares[str(version)] = float(np.sum(probabilities * incremental)) / oracle
    return {
        "days": len(last),
        "decisions": len(evaluated),
        "first_day": str(last[0]),
        "champion": champion,
        "shares": shares,
    }


# ------------------------------------------------------------------------------------------
# The benchmark
# ------------------------------------------------------------------------------------------


def _fmt_share(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:6.1f}%"


def _print_table(report: RegretReport, results: dict[str, Any]) -> None:
    totals = report.totals
    n = totals["decisions"]
    print(
        f"\ndecision quality: {n:,} live non-holdout decisions over {totals['days']} days "
        f"({totals['holdout_decisions']:,} holdout), expected incremental margin vs no_offer"
    )
    print(f"{'policy':<22}{'incremental':>14}{'per decision':>14}{'share of oracle':>17}")
    for row in report.table().itertuples(index=False):
        print(
            f"{row.policy:<22}{row.incremental_margin:>14,.1f}{row.per_decision:>14.3f}"
            f"{_fmt_share(row.share_of_oracle):>17}"
        )
    print("\npolicy against each baseline (difference in incremental margin; ratio if > 0):")
    for label, difference in results["policy_minus"].items():
        name = results["best_static"] if label == "best_static" else label
        ratio = results["ratios"][f"policy / {name}"]
        shown = f"{ratio:8.3f}" if ratio is not None else "     n/a"
        print(f"  policy - {label:<16}{difference:>12,.1f}   policy / {name:<16}{shown}")
    realised = report.realised
    if realised and realised.get("policy_decisions"):
        print(
            f"\nrealised, matured outcomes vs holdout ({realised['policy_decisions']:,} vs "
            f"{realised['holdout_decisions']:,}): {realised['incremental']:,.1f} "
            f"(95% CI {realised['ci_low']:,.1f} .. {realised['ci_high']:,.1f}); expected on the "
            f"same decisions {realised['expected_incremental']:,.1f}"
        )
    print(
        f"\npolicy share {_fmt_share(report.share)} (target {TARGET_SHARE:.0%}): "
        f"{'met' if report.share >= TARGET_SHARE else 'NOT met'}; regret by rule: "
        + ", ".join(f"{k} {v:,.1f}" for k, v in totals["regret_by_rule"].items())
    )
    learned, ceiling = results["learned"], results["information_ceiling"]
    print(
        f"the learnt policy: {_fmt_share(learned['trained_model_share']).strip()} of the oracle "
        f"over the {learned['trained_model_decisions']:,} decisions a trained model took; "
        f"{_fmt_share(learned['last_days_share']).strip()} over the last {learned['last_days']} "
        f"days ({learned['last_days_decisions']:,} decisions; there "
        + ", ".join(
            f"{name} {_fmt_share(value).strip()}"
            for name, value in learned["last_days_static"].items()
        )
        + ")"
    )
    print(
        "by week: "
        + "; ".join(
            f"{w['first_day'][5:]}..{w['last_day'][5:]} {_fmt_share(w['share']).strip()} "
            f"(best static {_fmt_share(w['best_static_share']).strip()}, models "
            f"{','.join(w['models'])})"
            for w in results["weeks"]
        )
    )
    if ceiling.get("share") is not None:
        print(
            "information ceiling: LightGBM fitted to the oracle's own margins on the first half "
            f"of the days ({ceiling['train_decisions']:,} decisions) reaches "
            f"{_fmt_share(ceiling['share']).strip()} of the oracle on the second half "
            f"({ceiling['test_decisions']:,}); the policy there: "
            f"{_fmt_share(ceiling['policy_share_same_days']).strip()}"
        )
    versions = results["versions"]
    if versions["shares"]:
        ranked = sorted(versions["shares"].items(), key=lambda kv: -kv[1])
        newest = max(versions["shares"], key=int)
        print(
            f"every model version judged by the oracle (before business rules) on the last "
            f"{versions['days']} days "
            f"({versions['decisions']:,} decisions from {versions['first_day']}; champion at the "
            f"end v{versions['champion']}): best "
            + ", ".join(f"v{v} {_fmt_share(x).strip()}" for v, x in ranked[:3])
            + "; champion "
            + _fmt_share(versions["shares"].get(str(versions["champion"]))).strip()
            + f"; newest v{newest} "
            + _fmt_share(versions["shares"][newest]).strip()
        )
    print(
        "on the decisions no business rule forced (the oracle is not bound by the frequency "
        "cap or eligibility, the policy is): "
        f"{_fmt_share(report.totals['bandit_share']).strip()} of the oracle"
    )
    print(
        "share of the oracle by deciding model: "
        + ", ".join(
            f"{version} {_fmt_share(row['share']).strip()} ({row['decisions']:,} decisions)"
            for version, row in totals["by_model_version"].items()
        )
    )
    vw = results["vw"]
    print(
        f"{VW}: learnt from {vw['examples_learnt']:,} matured decisions, picked for "
        f"{vw['decisions_picked']:,} ({vw['seconds']:.1f} s)"
    )
    print(
        "\noracle calibration on matured decisions (realised reward - oracle's expected margin "
        "of the action taken):"
    )
    print(f"  {'group':<32}{'decisions':>10}{'realised':>10}{'oracle':>10}{'gap':>9}{'z':>7}")
    for row in results["oracle_calibration"]:
        print(
            f"  {row['group']:<32}{row['decisions']:>10,}{row['realised']:>10.2f}"
            f"{row['oracle']:>10.2f}{row['gap']:>9.2f}{row['z']:>7.1f}"
        )
    for retrain in results.get("retrains", []):
        detail = {k: v for k, v in retrain.items() if k != "day"}
        print(f"retrain after {retrain['day']}: {detail}")
    print(f"plots: {results['plots']['cumulative']}, {results['plots']['regret']}")


def evaluate(settings: Settings, out_dir: Path, seed: int) -> tuple[RegretReport, dict[str, Any]]:
    """Evaluate the run under ``settings``: regret against the oracle, the Vowpal Wabbit
    replay, plots in ``out_dir``. Out: (report including VW, JSON-ready results)."""
    started = time.perf_counter()
    base = load_regret_report(settings)
    regret_seconds = time.perf_counter() - started
    evaluated = base.decisions[~base.decisions["holdout"]]
    from journey_pipeline.decide.log import read_decisions
    from journey_pipeline.learn.outcomes import load_outcomes
    from journey_pipeline.warehouse import warehouse

    with warehouse(settings.warehouse_path) as con:
        outcomes = load_outcomes(con)
        logged = read_decisions(con, mode="live")
    features = contract_features(settings, evaluated)
    propensity = logged.set_index("decision_id")["propensity"]
    outcomes = outcomes.assign(propensity=outcomes["decision_id"].map(propensity))
    vw_actions, vw_figures = vw_replay(evaluated, features, outcomes, seed=seed)
    report = base.with_policies({VW: vw_actions})
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {
        "cumulative": str(plot_cumulative(report, out_dir / "quality_cumulative.png")),
        "regret": str(plot_regret(report, out_dir / "quality_regret.png")),
    }
    sums = report.totals["incremental"]
    best_static = report.best_static
    learned = learned_shares(report)
    weeks = weekly_shares(report)
    ceiling = information_ceiling(report, features, seed)
    versions = version_shares(report, features, settings)
    calibration = oracle_calibration(report.decisions, outcomes)

    def ratio(baseline: str) -> float | None:
        # A ratio to a baseline that loses money (or makes none) says nothing; the
        # difference is reported for every baseline.
        return sums[POLICY] / sums[baseline] if sums[baseline] > 0 else None

    baselines = {ORACLE: ORACLE, UNIFORM: UNIFORM, "best_static": best_static, VW: VW}
    results = {
        "share_of_oracle": report.share,
        "target_share": TARGET_SHARE,
        "target_met": bool(report.share >= TARGET_SHARE),
        "incremental": sums,
        "best_static": best_static,
        "ratios": {f"policy / {name}": ratio(name) for name in baselines.values()},
        "policy_minus": {label: sums[POLICY] - sums[name] for label, name in baselines.items()},
        "beats": {
            label: bool(sums[POLICY] > sums[name])
            for label, name in baselines.items()
            if name != ORACLE
        },
        "vw": vw_figures,
        "learned": learned,
        "unforced_share": report.totals["bandit_share"],
        "weeks": weeks,
        "information_ceiling": ceiling,
        "versions": versions,
        "oracle_calibration": calibration.round(3).reset_index().to_dict(orient="records"),
        "report": report.summary(),
        "plots": plots,
        "seconds": {"regret": regret_seconds, "vw_replay": vw_figures["seconds"]},
    }
    return report, results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 days, 3,000 contacts")
    parser.add_argument("--days", type=int, default=None)
    parser.add_argument("--contacts", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--home", type=Path, default=None, help="evaluate this JOURNEY_HOME")
    parser.add_argument("--out", type=Path, default=Path("data/reports"), help="PNG folder")
    parser.add_argument("--keep", action="store_true", help="keep the temporary JOURNEY_HOME")
    parser.add_argument(
        "--validation-days",
        type=float,
        default=VALIDATION_DAYS,
        help="time-based validation window of each retraining (plain engine)",
    )
    parser.add_argument(
        "--retrain-every",
        type=int,
        default=RETRAIN_EVERY,
        help="retrain every N simulated days (plain engine; the demo retrains weekly)",
    )
    parser.add_argument(
        "--drift-day",
        type=int,
        default=None,
        help="the simulated world drifts on this day (plain engine); shares are then also "
        "reported per week around it",
    )
    parser.add_argument(
        "--pessimism",
        type=float,
        default=DEFAULT_PESSIMISM,
        help="the bandit's pessimism in every retrain (plain engine); 0 turns it off",
    )
    parser.add_argument(
        "--engine",
        choices=["plain", "dagster"],
        default="plain",
        help="run the loop's functions directly (plain) or through Dagster's run_demo",
    )
    args = parser.parse_args(argv)
    days = args.days or (10 if args.quick else 30)
    contacts = args.contacts or (3_000 if args.quick else 20_000)

    started = time.perf_counter()
    loop_summary: dict[str, Any] | None = None
    scratch: Path | None = None
    previous_env = {k: os.environ.get(k) for k in ("JOURNEY_HOME", "DAGSTER_HOME")}
    try:
        if args.home is not None:
            os.environ["JOURNEY_HOME"] = str(args.home.absolute())
            settings = load_settings()
        else:
            scratch = Path(tempfile.mkdtemp(prefix="bench-quality-"))
            if args.engine == "plain":
                loop_summary = run_loop_plain(
                    scratch / "home",
                    days,
                    contacts,
                    args.seed,
                    args.validation_days,
                    args.retrain_every,
                    args.drift_day,
                    args.pessimism,
                )
            else:
                loop_summary = run_loop_dagster(scratch / "home", days, contacts, args.seed)
            settings = load_settings()
        loop_seconds = time.perf_counter() - started
        report, results = evaluate(settings, args.out.absolute(), args.seed)
    finally:
        for key, value in previous_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if scratch is not None and not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    results.update(
        {
            "days": days if args.home is None else report.totals["days"],
            "contacts": contacts if args.home is None else None,
            "seed": args.seed,
            "drift_day": args.drift_day,
            "pessimism": args.pessimism if args.home is None else None,
            "home": str(args.home or (scratch / "home" if scratch else "")),
        }
    )
    results["engine"] = args.engine if loop_summary is not None else None
    results["seconds"]["loop"] = loop_seconds if loop_summary is not None else 0.0
    if loop_summary is not None and "seconds_by_stage" in loop_summary:
        results["seconds"]["loop_by_stage"] = loop_summary["seconds_by_stage"]
        results["retrains"] = loop_summary["retrains"]
    results["seconds"]["total"] = time.perf_counter() - started
    _print_table(report, results)
    print(
        json.dumps(
            {
                k: results[k]
                for k in (
                    "share_of_oracle",
                    "unforced_share",
                    "learned",
                    "information_ceiling",
                    "ratios",
                    "seconds",
                )
            },
            default=str,
        )
    )
    return results


if __name__ == "__main__":
    main()
