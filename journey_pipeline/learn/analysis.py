"""Glue between the warehouse and the learn stage's statistics, used by its assets."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import duckdb
import numpy as np
import pandas as pd

from journey_pipeline.actions import ACTION_NAMES
from journey_pipeline.features.contract import MART, MODEL_FEATURES
from journey_pipeline.learn.ope import baseline_policies, policy_value_table

# Share of features whose distribution drifted at which the loop retrains.
DRIFT_SHARE_THRESHOLD = 0.3

# Elapsed-time features grow by construction as a population ages, whatever its behaviour:
# comparing them across windows would report drift every day. Drift is judged on the rest.
AGE_FEATURES = (
    "tenure_days",
    "days_in_stage",
    "days_since_last_purchase",
    "days_since_last_action",
)
DRIFT_FEATURES = [f for f in MODEL_FEATURES if f not in AGE_FEATURES]


def outcome_rebuild_range(day: date, window_days: int) -> tuple[date, date, datetime]:
    """Which decision dates the outcomes partition of ``day`` rebuilds, and its maturity clock.

    Decisions of day D are dated D+1 (taken at its close). D's events fall in the windows of
    decisions dated D-window+1 .. D+1, and everything up to D's close has arrived, so that
    close is the clock that matures decisions dated D-window+1 (whose window ends there).
    One more day back keeps a re-run after a late event honest. Returns (first decision date,
    last decision date, as_of).
    """
    close = datetime.combine(day + timedelta(days=1), datetime.min.time())
    return day - timedelta(days=window_days), close.date(), close


def outcome_frame(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """All live decisions with their outcomes (``learn.outcomes``), oldest first."""
    return con.execute("SELECT * FROM learn.outcomes ORDER BY decided_at, decision_id").df()


def baseline_policy_values(outcomes: pd.DataFrame, *, clip: float | None = 50.0) -> pd.DataFrame:
    """Off-policy value of uniform random and of each static action, from the policy's own
    matured, non-holdout decisions and their logged propensities (IPS and SNIPS)."""
    logged = outcomes[outcomes["matured"] & ~outcomes["holdout"] & outcomes["reward"].notna()]
    if logged.empty:
        return pd.DataFrame()
    policies = baseline_policies(len(logged), ACTION_NAMES)
    return policy_value_table(
        logged["reward"].to_numpy(float),
        logged["action"].tolist(),
        logged["propensity"].to_numpy(float),
        policies,
        ACTION_NAMES,
        methods=("ips", "snips"),
        clip=clip,
    )


def feature_windows(
    con: duckdb.DuckDBPyConnection,
    reference_end: date | None,
    *,
    reference_days: int = 7,
    sample: int = 20_000,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The drift report's two windows of the feature mart.

    Reference: the ``reference_days`` feature dates ending at ``reference_end`` (the end of
    the champion's training data), or the first ``reference_days`` dates when there is no
    champion yet. Current: the newest feature date. Each window is sampled to ``sample`` rows
    (seeded) to bound the report's cost.
    """
    empty = pd.DataFrame(columns=DRIFT_FEATURES)
    bounds = con.execute(f"SELECT min(feature_date), max(feature_date) FROM {MART}").fetchone()
    if bounds[0] is None:
        return empty, empty, {"reason": "the feature mart is empty"}
    first, latest = bounds
    ref_end = (
        reference_end if reference_end is not None else first + timedelta(days=reference_days - 1)
    )
    ref_start = ref_end - timedelta(days=reference_days - 1)
    if ref_start < first or ref_end >= latest:
        # Not enough history for a full reference window before the newest day.
        return (
            empty,
            empty,
            {
                "reason": f"no complete {reference_days}-day reference window before {latest}",
                "current_window": str(latest),
                "reference_window": f"{ref_start}..{ref_end}",
            },
        )
    columns = ", ".join(DRIFT_FEATURES)

    def window(lo: date, hi: date) -> pd.DataFrame:
        frame = con.execute(
            f"SELECT {columns} FROM {MART} WHERE feature_date BETWEEN ? AND ?", [lo, hi]
        ).df()
        if len(frame) > sample:
            frame = frame.sample(n=sample, random_state=np.random.RandomState(seed))
        return frame.reset_index(drop=True)

    reference = window(ref_start, ref_end)
    current = window(latest, latest)
    return (
        reference,
        current,
        {
            "reference_window": f"{ref_start}..{ref_end}",
            "current_window": str(latest),
        },
    )


def daily_model_metrics(outcomes: pd.DataFrame) -> pd.DataFrame:
    """Per decision day, for the policy's own matured decisions (holdout excluded): the AUC of
    the model's expected reward as a score of conversion, and revenue per user.

    Days where the AUC is undefined (one class only, or no model scores) have NaN. Columns:
    date, auc, rpu, decisions.
    """
    from journey_pipeline.decide.reward_model import roc_auc

    live = outcomes[outcomes["matured"] & ~outcomes["holdout"]].copy()
    if live.empty:
        return pd.DataFrame(columns=["date", "auc", "rpu", "decisions"])
    live["date"] = pd.to_datetime(live["decision_date"])
    rows = []
    for day, group in live.groupby("date"):
        scored = group[group["expected_reward"].notna()]
        labels = scored["converted"].astype(int).to_numpy()
        auc = (
            float(roc_auc(labels, scored["expected_reward"].to_numpy(float)))
            if len(scored) and 0 < labels.sum() < len(labels)
            else np.nan
        )
        per_user = group.groupby("contact_id")["revenue"].sum()
        rows.append(
            {"date": day, "auc": auc, "rpu": float(per_user.mean()), "decisions": len(group)}
        )
    return pd.DataFrame(rows)


def champion_outcomes(outcomes: pd.DataFrame, champion_version: str | None) -> pd.DataFrame:
    """The decisions taken while ``champion_version`` was live (its own and its holdout's);
    all decisions of the cold-start policy when there is no champion."""
    if champion_version is None:
        return outcomes[outcomes["model_version"].isna()]
    return outcomes[outcomes["model_version"].astype(str) == str(champion_version)]
