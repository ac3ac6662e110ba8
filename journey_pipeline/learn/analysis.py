"""Glue between the warehouse and the learn stage's statistics, used by its assets."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pandas as pd

from journey_pipeline.actions import ACTION_NAMES
from journey_pipeline.features.contract import MART, MODEL_FEATURES
from journey_pipeline.learn.ope import baseline_policies, policy_value_table

if TYPE_CHECKING:  # Evidently is imported only when a drift report runs
    from journey_pipeline.learn.drift import DriftResult
    from journey_pipeline.settings import Settings

# Share of features whose distribution drifted at which the loop retrains.
DRIFT_SHARE_THRESHOLD = 0.3

# Features that move as a population ages, whatever its behaviour: elapsed times grow by
# construction, and contacts only move forward through the lifecycle funnel (churn is one
# more step), so the stage mix of an existing base shifts toward customer and churned week
# after week. Comparing them across windows would report drift that is only ageing.
AGE_FEATURES = (
    "tenure_days",
    "days_in_stage",
    "days_since_last_purchase",
    "days_since_last_action",
    "lifecycle_stage_rank",
)
# Features that describe what the loop itself did to a contact (how many offers it sent, and
# the responses to the offers it chose): they move whenever the policy changes (exploration
# ending, a promotion), which is not a change in the customers. A change in how customers
# respond to offers shows in the performance sensor and the experiment analysis instead.
POLICY_FEATURES = ("offers_received_30d", "offer_open_rate_30d", "offer_click_rate_30d")
# CRM properties set at sign-up: a contact's value does not move, so their distribution moves
# only as far as the population turns over in a window (a few percent a week). In the drift
# share they would mostly add features that cannot have drifted yet and dilute the ones that
# have; a change in who signs up shows first in behaviour and in the performance sensor.
PROPERTY_FEATURES = ("acquisition_channel_rank", "loyalty_member")
# Drift is judged on the remaining features: the customers' own behaviour and state.
DRIFT_FEATURES = [
    f for f in MODEL_FEATURES if f not in AGE_FEATURES + POLICY_FEATURES + PROPERTY_FEATURES
]
# Fewer comparable features than this and the drift share says little (one feature gives a
# share of 0 or 1): the check is skipped with a reason.
MIN_DRIFT_FEATURES = 2

_LOOKBACK = re.compile(r"_(\d+)d$")


def feature_lookback_days(name: str) -> int:
    """Days of history a feature aggregates, from its name (``spend_30d`` -> 30; 0 for a
    feature without a window, such as ``lifecycle_stage_rank``)."""
    match = _LOOKBACK.search(name)
    return int(match.group(1)) if match else 0


def warming_up(features: list[str], history_start: date, reference_start: date) -> dict[str, str]:
    """Features whose look-back window is not yet full on the reference window's first day.

    A feature row dated D aggregates the events of the ``W`` days before D. While D - W is
    before the first day of events (``history_start``), the window is partly empty, so the
    feature grows from nothing as history accumulates: comparing such rows with later ones
    reports drift that is only the history filling up. The current window is later than the
    reference, so a full reference window implies a full current one. Out: feature -> reason.
    """
    skipped: dict[str, str] = {}
    for name in features:
        lookback = feature_lookback_days(name)
        full_from = history_start + timedelta(days=lookback)
        if reference_start < full_from:
            skipped[name] = (
                f"warming up: its {lookback}-day window is full from feature date "
                f"{full_from}, the reference window starts {reference_start}"
            )
    return skipped


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


def history_start(con: duckdb.DuckDBPyConnection) -> date | None:
    """First day of events in the warehouse (None when there are none). Without
    ``raw.events`` the day before the feature mart's first date (a feature row is computed
    from the events before its date)."""
    tables = {
        r[0]
        for r in con.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables"
        ).fetchall()
    }
    if "raw.events" in tables:
        first = con.execute("SELECT min(event_date) FROM raw.events").fetchone()[0]
        if first is not None:
            return first
    if MART not in tables and f"main.{MART}" not in tables:
        return None
    first = con.execute(f"SELECT min(feature_date) FROM {MART}").fetchone()[0]
    return None if first is None else first - timedelta(days=1)


def feature_windows(
    con: duckdb.DuckDBPyConnection,
    reference_end: date | None,
    *,
    current: date | None = None,
    features: list[str] | None = None,
    reference_days: int = 5,
    min_features: int = MIN_DRIFT_FEATURES,
    sample: int = 20_000,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The drift report's two windows of the feature mart, and which features to compare.

    Reference: the ``reference_days`` feature dates ending at ``reference_end``, the end of
    the champion's training data: drift means "the customers no longer look like the data
    the live model learned from". Current: ``current`` (default: the newest feature date).
    Each window is sampled to ``sample`` rows (seeded) to bound the report's cost.

    Only features whose look-back window is full in the reference window are compared (see
    :func:`warming_up`); the others are listed in ``info["warming_up"]``. When the training
    window predates the day ``min_features`` features have full windows, the reference moves
    forward to start that day (``info["reference_moved"]`` says so). The check is skipped
    (empty frames and ``info["reason"]``) when there is no champion (no training window to
    compare with), the mart is empty, the reference window is not entirely before the newest
    day, or fewer than ``min_features`` features are comparable. Out: (reference, current,
    info) where ``info`` also has ``reference_window``, ``current_window`` and ``features``
    (the compared columns).
    """
    features = list(features if features is not None else DRIFT_FEATURES)
    empty = pd.DataFrame(columns=features)
    bounds = con.execute(f"SELECT min(feature_date), max(feature_date) FROM {MART}").fetchone()
    if bounds[0] is None:
        return empty, empty, {"reason": "the feature mart is empty", "features": []}
    first, latest = bounds
    if current is not None:
        if not first <= current <= latest:
            raise ValueError(f"no feature date {current} in the mart ({first}..{latest})")
        latest = current
    info: dict = {"current_window": str(latest), "features": []}
    if reference_end is None:
        info["reason"] = (
            "no champion yet: there is no training window to compare the newest features with"
        )
        return empty, empty, info
    start = history_start(con) or first - timedelta(days=1)
    ref_end = min(reference_end, latest - timedelta(days=1))
    ref_start = ref_end - timedelta(days=reference_days - 1)
    # A champion trained while the windows were still filling has a training window in which
    # too few features are comparable: the reference then moves forward to the first days
    # on which ``min_features`` of them have full windows, the closest honest stand-in.
    lookbacks = sorted(feature_lookback_days(f) for f in features)
    if len(lookbacks) >= min_features:
        comparable_from = start + timedelta(days=lookbacks[min_features - 1])
        if ref_start < comparable_from:
            ref_start = comparable_from
            ref_end = ref_start + timedelta(days=reference_days - 1)
            info["reference_moved"] = (
                f"the champion's training window ends {reference_end}, before {min_features} "
                f"features have full look-back windows ({comparable_from}): the reference "
                f"starts then"
            )
    info["reference_window"] = f"{ref_start}..{ref_end}"
    if ref_start < first or ref_end >= latest:
        info["reason"] = (
            f"no complete {reference_days}-day reference window {ref_start}..{ref_end} before "
            f"the newest feature day {latest} (features from {first}, history from {start})"
        )
        return empty, empty, info
    warm = warming_up(features, start, ref_start)
    usable = [f for f in features if f not in warm]
    info["warming_up"] = warm
    info["features"] = usable
    if len(usable) < min_features:
        info["reason"] = (
            f"only {len(usable)} feature(s) have a full look-back window in the reference "
            f"window {ref_start}..{ref_end} (history from {start}); at least {min_features} "
            "are needed for a drift share"
        )
        return empty, empty, info
    columns = ", ".join(usable)

    def window(lo: date, hi: date) -> pd.DataFrame:
        frame = con.execute(
            f"SELECT {columns} FROM {MART} WHERE feature_date BETWEEN ? AND ?", [lo, hi]
        ).df()
        if len(frame) > sample:
            frame = frame.sample(n=sample, random_state=np.random.RandomState(seed))
        return frame.reset_index(drop=True)

    return window(ref_start, ref_end), window(latest, latest), info


def append_drift_history(path: Path, info: dict, result: DriftResult | None) -> pd.DataFrame:
    """Add one drift check to the history the drift sensor reads (``drift_history.parquet``).

    In: the parquet ``path``, the ``info`` of :func:`feature_windows` and the report's result
    (None when the windows were skipped). One row per (current, reference) window pair: a
    re-run replaces its row. Out: the whole history, oldest first.
    """
    skipped = info.get("reason") or (result.skipped_reason if result is not None else None)
    row = pd.DataFrame(
        [
            {
                "current_window": info.get("current_window"),
                "reference_window": info.get("reference_window"),
                "drift_share": None if result is None or info.get("reason") else result.drift_share,
                "skipped_reason": skipped,
                "features": ", ".join(info.get("features", [])),
                "drifted_columns": ", ".join(result.drifted_columns) if result else "",
            }
        ]
    )
    if path.exists():
        row = pd.concat([pd.read_parquet(path), row], ignore_index=True)
    history = row.drop_duplicates(subset=["current_window", "reference_window"], keep="last")
    path.parent.mkdir(parents=True, exist_ok=True)
    history.to_parquet(path)
    return history


def check_drift(settings: Settings) -> tuple[dict, DriftResult | None]:
    """One drift check, as the ``drift_report`` asset runs it: the champion's training window
    of features against the newest feature day (:func:`feature_windows`), the Evidently
    report written to ``reports/drift_report.html`` and the check appended to
    ``reports/drift_history.parquet``. Out: the windows' info and the result (None when the
    windows were skipped; ``info["reason"]`` says why)."""
    from journey_pipeline.decide import registry

    # Evidently takes seconds to import: load it when a drift report runs, not with the
    # definitions that every run, sensor tick and CLI call loads.
    from journey_pipeline.learn.drift import drift_report
    from journey_pipeline.warehouse import warehouse

    reference_end = registry.champion_training_end(settings)
    with warehouse(settings.warehouse_path, read_only=True) as con:
        reference, current, windows = feature_windows(con, reference_end)
    result = None
    if not windows.get("reason"):
        html = settings.reports_dir / "drift_report.html"
        result = drift_report(reference, current, windows["features"], html)
    append_drift_history(settings.reports_dir / "drift_history.parquet", windows, result)
    return windows, result


def drift_onset(history: pd.DataFrame, threshold: float = DRIFT_SHARE_THRESHOLD) -> date | None:
    """The first feature day of the latest drift episode in a drift history (the rows of
    :func:`append_drift_history`), or None when no check ever reached ``threshold``.

    An episode is a run of consecutive checks at or above the threshold; skipped checks
    (no drift share) neither start nor end one. The retrain reads it to learn from the new
    regime only (``TrainingConfig.regime_start``), also after the episode ends: an episode
    ends when a champion trained on the drifted features becomes the reference."""
    if history.empty:
        return None
    checks = history.dropna(subset=["drift_share"]).copy()
    checks["day"] = pd.to_datetime(checks["current_window"]).dt.date
    checks = checks.sort_values("day", kind="stable").drop_duplicates("day", keep="last")
    onset, previous_drifted = None, False
    for day, share in zip(checks["day"], checks["drift_share"], strict=True):
        drifted = float(share) >= threshold
        if drifted and not previous_drifted:
            onset = day
        previous_drifted = drifted
    return onset


def read_drift_history(reports_dir: Path) -> pd.DataFrame:
    """The history the ``drift_report`` asset keeps under ``reports_dir`` (empty before the
    first report)."""
    path = Path(reports_dir) / "drift_history.parquet"
    return pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=["drift_share"])


def drift_history_onset(reports_dir: Path, threshold: float = DRIFT_SHARE_THRESHOLD) -> date | None:
    """:func:`drift_onset` of the history kept under ``reports_dir``."""
    return drift_onset(read_drift_history(reports_dir), threshold)


def drift_episode_age(reports_dir: Path, threshold: float = DRIFT_SHARE_THRESHOLD) -> int | None:
    """Days from the onset of the open drift episode (:func:`drift_onset`) to the newest
    check's feature day, 0 on the day it is detected; None when the newest check (skipped
    ones aside) is below ``threshold``, or there is none."""
    checks = read_drift_history(reports_dir).dropna(subset=["drift_share"])
    if not len(checks) or float(checks["drift_share"].iloc[-1]) < threshold:
        return None
    newest = pd.Timestamp(checks["current_window"].iloc[-1]).date()
    return (newest - drift_onset(checks, threshold)).days


def daily_model_metrics(outcomes: pd.DataFrame) -> pd.DataFrame:
    """Per decision day, for the policy's own matured decisions (holdout excluded): the AUC of
    the model's expected reward as a score of conversion, and revenue per user.

    Days where the AUC is undefined (one class only, or no model scores) have NaN. Columns:
    date, auc, revenue_per_user, decisions (the columns :func:`guardrails.degraded_days` reads).
    """
    from journey_pipeline.decide.reward_model import roc_auc

    live = outcomes[outcomes["matured"] & ~outcomes["holdout"]].copy()
    if live.empty:
        return pd.DataFrame(columns=["date", "auc", "revenue_per_user", "decisions"])
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
            {
                "date": day,
                "auc": auc,
                "revenue_per_user": float(per_user.mean()),
                "decisions": len(group),
            }
        )
    return pd.DataFrame(rows)


def champion_outcomes(outcomes: pd.DataFrame, champion_version: str | None) -> pd.DataFrame:
    """The decisions taken while ``champion_version`` was live (its own and its holdout's);
    all decisions of the cold-start policy when there is no champion."""
    if champion_version is None:
        return outcomes[outcomes["model_version"].isna()]
    return outcomes[outcomes["model_version"].astype(str) == str(champion_version)]
