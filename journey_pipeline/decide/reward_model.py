"""Training the reward models and the bandit from a training frame, with honest validation.

Training frame (the decision log joined with outcomes, features as of each decision):
``decision_id, contact_id, decided_at, action, propensity, reward, converted`` plus the
feature columns (MODEL_FEATURES by default).

Validation is blocked cross-fitting (:func:`validation_folds`): the window is cut by time into
5 consecutive blocks, each judged by models fitted on the other four, so every decision is
judged once, out of fold, and the off-policy comparison with the champion has all of them
rather than the latest few days, which the champion logged with little exploration. With
``crossfit_folds=0`` the latest ``validation_days`` validate instead (when the history is no
longer than that, its latest half). Reported:

- per action a LightGBM conversion classifier: AUC, log loss and expected calibration error
  (ECE), pooled over actions (``auc``, ``log_loss``, ``ece``) and per action;
- per action a LightGBM margin regressor: RMSE (``margin_rmse``);
- the bandit policy's off-policy value on the validation window (SNIPS with a 95% interval:
  ``ope_value``, ``ope_ci_low``, ``ope_ci_high``), the logging policy's realised value, and,
  when a champion is given, the champion's value on the same window for a fair comparison.

The deployable bandit is then refitted on all rows (the latest data matters most).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from journey_pipeline.actions import ACTION_NAMES
from journey_pipeline.decide.bandit import DEFAULT_PESSIMISM, ContextualBandit
from journey_pipeline.features.contract import MODEL_FEATURES

TRAINING_COLUMNS = [
    "decision_id",
    "contact_id",
    "decided_at",
    "action",
    "propensity",
    "reward",
    "converted",
]

CLASSIFIER_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 30,
    "lambda_l2": 1.0,
    "verbosity": -1,
    "deterministic": True,
    "force_col_wise": True,
    "num_threads": 1,
}
REGRESSOR_PARAMS: dict[str, Any] = {**CLASSIFIER_PARAMS, "objective": "regression"}


@dataclass(frozen=True)
class PolicyValueEstimate:
    """An off-policy estimate of a policy's mean reward per decision, with a 95% interval."""

    value: float
    ci_low: float
    ci_high: float


PolicyValueEstimator = Callable[[np.ndarray, np.ndarray, np.ndarray], Any]


def snips_estimate(
    rewards: np.ndarray, logged_propensities: np.ndarray, target_propensities: np.ndarray
) -> PolicyValueEstimate:
    """Self-normalised inverse propensity estimate with a delta-method 95% interval.

    In: per logged decision the reward, the logging policy's probability of the logged action
    and the target policy's probability of that same action. Out: PolicyValueEstimate.
    """
    r = np.asarray(rewards, dtype=np.float64)
    w = np.asarray(target_propensities, dtype=np.float64) / np.asarray(
        logged_propensities, dtype=np.float64
    )
    if len(r) == 0 or w.sum() <= 0:
        return PolicyValueEstimate(math.nan, math.nan, math.nan)
    value = float(np.sum(w * r) / np.sum(w))
    # Linearisation of the ratio estimator: var ~ sum(w^2 (r - V)^2) / (sum w)^2.
    se = float(np.sqrt(np.sum(w**2 * (r - value) ** 2)) / np.sum(w))
    return PolicyValueEstimate(value, value - 1.96 * se, value + 1.96 * se)


def snips_difference(
    rewards: np.ndarray,
    logged_propensities: np.ndarray,
    target_a: np.ndarray,
    target_b: np.ndarray,
) -> PolicyValueEstimate:
    """SNIPS value of policy A minus that of policy B on the same logged decisions, with a
    delta-method 95% interval of the *paired* difference.

    Both policies are valued on the same rows, so most of the noise (which contacts happened
    to buy) is shared and cancels in the difference: its interval is far narrower than the
    gap between the two policies' own intervals suggests. Comparing one policy's lower bound
    with the other's would favour whichever policy logged the data (its weights are near 1,
    so its own interval is the narrowest)."""
    r = np.asarray(rewards, dtype=np.float64)
    logged = np.asarray(logged_propensities, dtype=np.float64)
    w_a = np.asarray(target_a, dtype=np.float64) / logged
    w_b = np.asarray(target_b, dtype=np.float64) / logged
    if len(r) == 0 or w_a.sum() <= 0 or w_b.sum() <= 0:
        return PolicyValueEstimate(math.nan, math.nan, math.nan)
    value_a = np.sum(w_a * r) / np.sum(w_a)
    value_b = np.sum(w_b * r) / np.sum(w_b)
    # Per-row influence of each ratio estimator; the difference's is their difference.
    influence = w_a * (r - value_a) / np.sum(w_a) - w_b * (r - value_b) / np.sum(w_b)
    se = float(np.sqrt(np.sum(influence**2)))
    diff = float(value_a - value_b)
    return PolicyValueEstimate(diff, diff - 1.96 * se, diff + 1.96 * se)


def default_estimator() -> PolicyValueEstimator:
    """The learn stage's SNIPS estimator when it is installed, else :func:`snips_estimate`."""
    try:
        from journey_pipeline.learn.ope import estimate_policy_value
    except ImportError:
        return snips_estimate

    def estimate(rewards: np.ndarray, logged: np.ndarray, target: np.ndarray) -> Any:
        return estimate_policy_value(rewards, logged, target, method="snips")

    return estimate


# -------------------------------------------------------------------- metrics
def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties averaged); NaN with a single class."""
    y = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = pd.Series(np.asarray(scores, dtype=np.float64)).rank(method="average").to_numpy()
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-15) -> float:
    """Mean binary cross-entropy; NaN on no rows."""
    y = np.asarray(labels, dtype=np.float64)
    if len(y) == 0:
        return math.nan
    p = np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def expected_calibration_error(
    labels: np.ndarray, probabilities: np.ndarray, n_bins: int = 10
) -> float:
    """ECE: bin-size-weighted mean |observed rate - mean predicted| over equal-width bins."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probabilities, dtype=np.float64)
    if len(y) == 0:
        return math.nan
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        in_bin = bins == b
        total += in_bin.sum() * abs(y[in_bin].mean() - p[in_bin].mean())
    return float(total / len(y))


def calibration_table(
    labels: np.ndarray, probabilities: np.ndarray, n_bins: int = 10
) -> pd.DataFrame:
    """Per equal-width bin: mean predicted, observed rate and count (non-empty bins)."""
    frame = pd.DataFrame({"y": np.asarray(labels, float), "p": np.asarray(probabilities, float)})
    frame["bin"] = np.minimum((frame["p"] * n_bins).astype(int), n_bins - 1)
    return (
        frame.groupby("bin")
        .agg(predicted=("p", "mean"), observed=("y", "mean"), count=("y", "size"))
        .reset_index()
    )


# ------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainingConfig:
    """What to train on and how; every field is logged as an MLflow parameter."""

    actions: tuple[str, ...] = tuple(ACTION_NAMES)
    features: tuple[str, ...] = tuple(MODEL_FEATURES)
    # Validation: blocked cross-fitting over ``crossfit_folds`` consecutive time blocks (see
    # validation_folds); 0 validates on the latest ``validation_days`` instead.
    crossfit_folds: int = 5
    validation_days: float = 7.0
    # Sliding window: only decisions taken in the last ``training_days`` days before the newest
    # one train and validate (customers and the effect of offers change); None keeps them all.
    training_days: float | None = None
    # Regime change: once at least ``min_regime_rows`` decisions were taken on or after
    # ``regime_start`` (the onset of the latest detected drift), only those train and
    # validate: outcomes of the old regime would teach the new policy the old customers.
    # With fewer, the whole window trains (there is nothing else to learn from yet).
    regime_start: date | datetime | None = None
    min_regime_rows: int = 1000
    num_boost_round: int = 100
    seed: int = 0
    bandit_options: dict[str, Any] = field(
        default_factory=lambda: {"min_observations": 200, "pessimism": DEFAULT_PESSIMISM}
    )
    min_validation_rows: int = 50

    def as_params(self) -> dict[str, Any]:
        """Flat parameter dict for tracking."""
        params: dict[str, Any] = {
            "actions": ",".join(self.actions),
            "n_features": len(self.features),
            "crossfit_folds": self.crossfit_folds,
            "validation_days": self.validation_days,
            "training_days": self.training_days if self.training_days is not None else "all",
            "regime_start": str(self.regime_start) if self.regime_start is not None else "none",
            "min_regime_rows": self.min_regime_rows,
            "num_boost_round": self.num_boost_round,
            "seed": self.seed,
            "min_validation_rows": self.min_validation_rows,
        }
        params.update({f"bandit_{k}": v for k, v in self.bandit_options.items()})
        return params


@dataclass
class TrainingResult:
    """Everything a training produced: the deployable bandit, the per-action models, metrics,
    the validation predictions behind the plots, and the data window."""

    config: TrainingConfig
    bandit: ContextualBandit
    conversion_models: dict[str, lgb.Booster | None]
    margin_models: dict[str, lgb.Booster | None]
    metrics: dict[str, float]
    per_action_metrics: pd.DataFrame
    validation: pd.DataFrame  # action, converted, p_convert per validation row
    data_window: dict[str, Any]
    input_example: pd.DataFrame

    def params(self) -> dict[str, Any]:
        """Parameters to track: the config, the bandit's reward model (two-part, or the
        regression it falls back to when rewards have no floor) and the data window."""
        reward_model = "two_part" if self.bandit._floors is not None else "regression"
        return {
            **self.config.as_params(),
            "bandit_reward_model": reward_model,
            **{f"data_{k}": v for k, v in self.data_window.items()},
        }

    def feature_importance(self) -> pd.DataFrame:
        """Total split gain per feature for the conversion and margin models (sorted)."""
        table = pd.DataFrame(
            0.0, index=list(self.config.features), columns=["conversion", "margin"]
        )
        for column, models in (
            ("conversion", self.conversion_models),
            ("margin", self.margin_models),
        ):
            for model in models.values():
                if model is not None:
                    table[column] += model.feature_importance(importance_type="gain")
        table["total"] = table.sum(axis=1)
        return table.sort_values("total", ascending=False)

    def plot_feature_importance(self, path: str | Path) -> Path:
        """Horizontal bar chart of gain per feature, written as PNG to ``path``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        table = self.feature_importance().iloc[::-1]
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(table) + 1.5))
        ax.barh(table.index, table["conversion"], label="conversion classifiers")
        ax.barh(table.index, table["margin"], left=table["conversion"], label="margin regressors")
        ax.set_xlabel("total split gain (all actions)")
        ax.set_title("Reward model feature importance")
        ax.legend(loc="lower right")
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def plot_calibration(self, path: str | Path) -> Path:
        """Reliability diagram of the conversion classifiers on the validation window (PNG)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 6))
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
        for action, rows in self.validation.groupby("action"):
            table = calibration_table(rows["converted"], rows["p_convert"])
            ax.plot(table["predicted"], table["observed"], marker="o", label=str(action))
        ax.set_xlabel("predicted conversion probability")
        ax.set_ylabel("observed conversion rate")
        ax.set_title(f"Calibration on validation (ECE {self.metrics.get('ece', math.nan):.3f})")
        ax.legend()
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def model_card(self) -> str:
        """Model card in Markdown: data window, features, metrics, intended use, limits."""
        w = self.data_window
        validation_days = w.get("validation_days", self.config.validation_days)
        metric_rows = "\n".join(
            f"| {name} | {value:.4f} |" for name, value in sorted(self.metrics.items())
        )
        per_action = self.per_action_metrics.round(4)
        per_action_rows = "\n".join(
            "| " + " | ".join(str(v) for v in [idx, *row]) + " |"
            for idx, row in zip(per_action.index, per_action.to_numpy().tolist(), strict=True)
        )
        header = "| action | " + " | ".join(per_action.columns) + " |"
        rule = "|" + "---|" * (len(per_action.columns) + 1)
        features = ", ".join(f"`{f}`" for f in self.config.features)
        options = ", ".join(f"{k}={v}" for k, v in sorted(self.config.bandit_options.items()))
        if getattr(self.bandit, "_floors", None) is not None:
            reward_model = (
                "per action, a bootstrap ensemble of LightGBM conversion classifiers, times one "
                "pooled LightGBM regressor of the margin of a conversion"
            )
        else:
            reward_model = (
                "a pooled LightGBM baseline of the margin and, per action, a bootstrap "
                "ensemble of strongly regularised LightGBM boosters of the deviation from it"
            )
        return f"""# Model card: journey next-best-action policy

## What it is
A contextual bandit over the actions {", ".join(f"`{a}`" for a in self.config.actions)}
(margin = attributed revenue minus the action's fixed cost): {reward_model}; Thompson
sampling over the ensemble mixed with epsilon-uniform exploration; every decision's
propensity is exact. Bandit options: {options or "defaults"}.
Per-action LightGBM conversion classifiers are trained alongside for validation.

## Data window
- Training: {w["train_start"]} to {w["train_end"]} ({w["n_train"]} decisions)
- Validation ({w.get("validation", f"the latest {validation_days:.3g} days")}): {w["valid_start"]}
  to {w["valid_end"]} ({w["n_valid"]} decisions)
- The deployed bandit is refitted on all {w.get("n_rows", w["n_train"] + w["n_valid"])} decisions.
- Regime: {w.get("regime", "no drift detected: the whole window")}

## Features
{features}

## Metrics (validation window)
| metric | value |
|---|---|
{metric_rows}

Per action:

{header}
{rule}
{per_action_rows}

`ope_*` is the self-normalised IPS value of this policy on the validation decisions (mean
margin per decision, 95% interval); `logged_policy_value` is what the logging policy realised.

## Intended use
Choosing the next-best action for CRM contacts at trigger events (cart abandonment, lifecycle
change to opportunity) inside the decision policy, which adds the persistent holdout,
eligibility rules, frequency cap, human overrides and the kill switch. Promotion to champion
goes through the gate comparing it with the current champion.

## Known limits
- Rewards are attributed by a fixed window after the decision: effects that arrive later, or
  that spill over between actions, are invisible.
- Off-policy estimates are only as good as the logged propensities and the overlap between the
  logging and this policy; the interval widens where they differ.
- Features are as of the previous midnight (UTC): same-day behaviour is not seen.
- Trained on the population and period above; drift (seasonality, new offers, price changes)
  calls for retraining, which the drift monitors trigger.
- Actions without enough logged data fall back to a constant (mean) reward estimate.
"""


def time_split(frame: pd.DataFrame, validation_days: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split at ``max(decided_at) - validation_days``: earlier rows train, later validate."""
    decided_at = pd.to_datetime(frame["decided_at"], utc=True)
    cutoff = decided_at.max() - pd.Timedelta(days=validation_days)
    valid = (decided_at >= cutoff).to_numpy()
    return frame[~valid], frame[valid]


def _train_booster(
    params: dict[str, Any], features: np.ndarray, label: np.ndarray, rounds: int, seed: int
) -> lgb.Booster | None:
    if len(label) < 2 * params["min_data_in_leaf"]:
        return None
    if params["objective"] == "binary" and len(np.unique(label)) < 2:
        return None
    return lgb.train(
        {**params, "seed": seed}, lgb.Dataset(features, label=label), num_boost_round=rounds
    )


def _predict(model: lgb.Booster | None, features: np.ndarray, fallback: float) -> np.ndarray:
    return np.full(len(features), fallback) if model is None else model.predict(features)


def logged_action_probabilities(
    bandit: ContextualBandit, logged: pd.DataFrame, features: Sequence[str]
) -> np.ndarray:
    """The bandit's exact probability of each logged decision's action."""
    probabilities = bandit.action_probabilities(logged[list(features)])
    codes = probabilities.columns.get_indexer(logged["action"])
    return probabilities.to_numpy()[np.arange(len(logged)), codes]


def evaluate_policy(
    logged: pd.DataFrame,
    target: np.ndarray,
    estimator: PolicyValueEstimator | None = None,
) -> PolicyValueEstimate:
    """Off-policy value on logged decisions (action, propensity, reward) of a policy that
    gives each logged action the probability ``target`` (:func:`logged_action_probabilities`)."""
    estimator = estimator or default_estimator()
    est = estimator(
        logged["reward"].to_numpy(dtype=np.float64),
        logged["propensity"].to_numpy(dtype=np.float64),
        target,
    )
    return PolicyValueEstimate(float(est.value), float(est.ci_low), float(est.ci_high))


def _utc(moment: date | datetime | str) -> pd.Timestamp:
    """``moment`` as a UTC timestamp (a naive one is taken to be UTC, as decision times are)."""
    stamp = pd.Timestamp(moment)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def regime_window(
    frame: pd.DataFrame, regime_start: date | datetime | None, min_rows: int
) -> tuple[pd.DataFrame, str, bool]:
    """The rows of the current regime: those decided on or after ``regime_start`` when there
    are at least ``min_rows`` of them, else all rows. Out: the rows, a one-line account of the
    choice (logged with the data window) and whether the rows are the regime's alone."""
    if regime_start is None or frame.empty:
        return frame, "no drift detected: the whole window", False
    start = _utc(regime_start)
    since = (pd.to_datetime(frame["decided_at"], utc=True) >= start).to_numpy()
    n_since = int(since.sum())
    if n_since < min_rows:
        account = (
            f"drift since {start.date()}: {n_since} decisions since, fewer than {min_rows}, "
            "so the whole window"
        )
        return frame, account, False
    account = (
        f"drift since {start.date()}: {n_since} decisions since, of {len(frame)} in the window"
    )
    return frame[since].reset_index(drop=True), account, True


def validation_folds(
    frame: pd.DataFrame, validation_days: float, *, crossfit_folds: int = 0, min_rows: int = 50
) -> tuple[list[tuple[pd.DataFrame, pd.DataFrame]], float, str]:
    """The (train, validation) pairs a training is judged on, from a frame sorted by time.

    - ``crossfit_folds`` >= 2: blocked cross-fitting. The frame is cut by time into that many
      consecutive blocks of equal size; each block validates the models fitted on the others,
      so every row is judged once, out of fold. A time split judges the policy on the latest
      days alone, logged by the current champion, which explores little: off-policy values
      of a policy that differs from it rest on a few heavily weighted decisions. Cross-fitted,
      every decision of the window judges, the early ones often logged under more
      exploration, and the judged models learn from most of the window, as the deployed one
      does. After a drift the regime's window is short, which a time split would cut further.
    - otherwise one time split (:func:`time_split`) at ``validation_days`` before the newest
      decision; when that leaves fewer than ``min_rows`` to train (a history no longer than
      the window: the first retrains after the cold start), the latest half validates.

    Out: the folds, the validation days of a time split (the whole span when cross-fitted)
    and a one-line account. ValueError when a fold has fewer than ``min_rows`` on a side.
    """
    decided_at = pd.to_datetime(frame["decided_at"], utc=True)
    span_days = (decided_at.max() - decided_at.min()) / pd.Timedelta(days=1) if len(frame) else 0.0
    if crossfit_folds >= 2:
        blocks = np.array_split(np.arange(len(frame)), crossfit_folds)
        folds = [(frame.drop(index=frame.index[block]), frame.iloc[block]) for block in blocks]
        scheme = f"cross-fitted over {crossfit_folds} consecutive time blocks"
        validation_days = span_days
    else:
        train, valid = time_split(frame, validation_days)
        if len(train) < min_rows:
            validation_days = span_days / 2
            train, valid = time_split(frame, validation_days)
        folds = [(train, valid)]
        scheme = f"time split: the latest {validation_days:.3g} days validate"
    for train, valid in folds:
        if len(valid) < min_rows or len(train) < min_rows:
            raise ValueError(
                f"{len(train)} training and {len(valid)} validation rows: need at least "
                f"{min_rows} of each (more logged outcomes, or a shorter validation window)"
            )
    return folds, float(validation_days), scheme


def train_reward_models(
    frame: pd.DataFrame,
    config: TrainingConfig | None = None,
    *,
    champion: ContextualBandit | None = None,
    champion_trained_until: date | datetime | str | None = None,
    estimator: PolicyValueEstimator | None = None,
) -> TrainingResult:
    """Train and validate the reward models and the bandit from a training frame.

    In: the training frame (see module docstring), a config, optionally the current champion's
    bandit and the newest decision it learnt from (``champion_trained_until``; both policies
    are then compared on the validation decisions after it only, as a model judged on its
    own training rows looks better than it is) and an injected OPE estimator
    ``(rewards, logged_propensities, target_propensities) -> obj with value, ci_low,
    ci_high``. Out: a :class:`TrainingResult`. ValueError when the frame lacks columns or
    the validation window has too few rows.
    """
    config = config or TrainingConfig()
    features = list(config.features)
    missing = [c for c in [*TRAINING_COLUMNS, *features] if c not in frame.columns]
    if missing:
        raise ValueError(f"training frame lacks columns {missing}")
    frame = frame.assign(
        reward=pd.to_numeric(frame["reward"], errors="coerce").astype(np.float64),
        propensity=pd.to_numeric(frame["propensity"], errors="coerce").astype(np.float64),
        converted=frame["converted"].fillna(False).astype(bool),
    )
    frame = frame[frame["action"].isin(config.actions) & np.isfinite(frame["reward"])]
    frame = frame.sort_values("decided_at", kind="stable", ignore_index=True)
    if config.training_days is not None and len(frame):
        decided = pd.to_datetime(frame["decided_at"], utc=True)
        since = decided.max() - pd.Timedelta(days=config.training_days)
        frame = frame[(decided >= since).to_numpy()].reset_index(drop=True)
    frame, regime, in_regime = regime_window(frame, config.regime_start, config.min_regime_rows)
    # After a detected drift: whether this model learnt from the new regime alone (the gate
    # does not promote one that could not, see registry.gate).
    regime_only = {"regime_only": float(in_regime)} if config.regime_start is not None else {}
    folds, validation_days, scheme = validation_folds(
        frame,
        config.validation_days,
        crossfit_folds=config.crossfit_folds,
        min_rows=config.min_validation_rows,
    )

    def matrix(rows: pd.DataFrame) -> np.ndarray:
        values = rows[features].to_numpy(dtype=np.float64, na_value=np.nan)
        values[~np.isfinite(values)] = np.nan
        return values

    # Each fold: per-action models and a bandit fitted on its training rows, judged on its
    # validation rows. The time split is one fold; cross-fitting judges every row out of fold.
    bandit_options = {**config.bandit_options, "feature_names": features}
    conversion_models: dict[str, lgb.Booster | None] = {}
    margin_models: dict[str, lgb.Booster | None] = {}
    parts, valid_parts, targets = [], [], []
    for train, valid in folds:
        for i, action in enumerate(config.actions):
            tr = train[train["action"] == action]
            va = valid[valid["action"] == action]
            x_tr, x_va = matrix(tr), matrix(va)
            converted = tr["converted"].to_numpy(dtype=np.float64)
            conversion_models[action] = _train_booster(
                CLASSIFIER_PARAMS, x_tr, converted, config.num_boost_round, config.seed + i
            )
            margin_models[action] = _train_booster(
                REGRESSOR_PARAMS,
                x_tr,
                tr["reward"].to_numpy(dtype=np.float64),
                config.num_boost_round,
                config.seed + 100 + i,
            )
            base_rate = float(converted.mean()) if len(converted) else 0.5
            mean_margin = float(tr["reward"].mean()) if len(tr) else 0.0
            parts.append(
                pd.DataFrame(
                    {
                        "action": action,
                        "converted": va["converted"].to_numpy(dtype=bool),
                        "p_convert": _predict(conversion_models[action], x_va, base_rate),
                        "reward": va["reward"].to_numpy(dtype=np.float64),
                        "margin": _predict(margin_models[action], x_va, mean_margin),
                    }
                )
            )
        # The policy judged on decisions it has not seen: a bandit fitted on the training part.
        fold_bandit = ContextualBandit(list(config.actions), seed=config.seed, **bandit_options)
        fold_bandit.update(train[features], train["action"], train["propensity"], train["reward"])
        targets.append(logged_action_probabilities(fold_bandit, valid, features))
        valid_parts.append(valid)
    valid = pd.concat(valid_parts, ignore_index=True)
    holdout_target = np.concatenate(targets)
    predictions = pd.concat(parts, ignore_index=True)
    per_action: dict[str, dict[str, float]] = {}
    for action in config.actions:
        rows = predictions[predictions["action"] == action]
        y, p = rows["converted"].to_numpy(dtype=bool), rows["p_convert"].to_numpy()
        residual = rows["reward"].to_numpy() - rows["margin"].to_numpy()
        per_action[action] = {
            "n_train": float(np.mean([(t["action"] == action).sum() for t, _ in folds])),
            "n_valid": len(rows),
            "auc": roc_auc(y, p),
            "log_loss": log_loss(y, p),
            "ece": expected_calibration_error(y, p),
            "margin_rmse": float(np.sqrt(np.mean(residual**2))) if len(rows) else math.nan,
        }
    validation = predictions[["action", "converted", "p_convert"]]
    y_all, p_all = validation["converted"].to_numpy(), validation["p_convert"].to_numpy()
    all_residuals = predictions["reward"].to_numpy() - predictions["margin"].to_numpy()
    n_train = float(np.mean([len(train) for train, _ in folds]))
    metrics: dict[str, float] = {
        "auc": roc_auc(y_all, p_all),
        "log_loss": log_loss(y_all, p_all),
        "ece": expected_calibration_error(y_all, p_all),
        "margin_rmse": float(np.sqrt(np.mean(all_residuals**2))),
        "n_train": n_train,
        "n_valid": float(len(valid)),
        "logged_policy_value": float(valid["reward"].mean()),
        **regime_only,
    }
    estimate = evaluate_policy(valid, holdout_target, estimator)
    metrics.update(
        {
            "ope_value": estimate.value,
            "ope_ci_low": estimate.ci_low,
            "ope_ci_high": estimate.ci_high,
        }
    )
    if champion is not None:
        unseen = np.ones(len(valid), dtype=bool)
        if champion_trained_until is not None:
            until = _utc(champion_trained_until)
            unseen = (pd.to_datetime(valid["decided_at"], utc=True) > until).to_numpy()
        metrics["champion_comparison_rows"] = float(unseen.sum())
        if unseen.sum() >= config.min_validation_rows:
            rows = valid[unseen]
            champion_target = logged_action_probabilities(champion, rows, features)
            champion_estimate = evaluate_policy(rows, champion_target, estimator)
            metrics.update(
                {
                    "champion_ope_value": champion_estimate.value,
                    "champion_ope_ci_low": champion_estimate.ci_low,
                    "champion_ope_ci_high": champion_estimate.ci_high,
                }
            )
            uplift = snips_difference(
                rows["reward"].to_numpy(dtype=np.float64),
                rows["propensity"].to_numpy(dtype=np.float64),
                holdout_target[unseen],
                champion_target,
            )
            metrics.update(
                {
                    "ope_uplift_vs_champion": uplift.value,
                    "ope_uplift_ci_low": uplift.ci_low,
                    "ope_uplift_ci_high": uplift.ci_high,
                }
            )

    bandit = ContextualBandit(list(config.actions), seed=config.seed, **bandit_options)
    bandit.update(frame[features], frame["action"], frame["propensity"], frame["reward"])

    def stamp(rows: pd.DataFrame, how: str) -> str:
        return str(pd.to_datetime(rows["decided_at"]).agg(how))

    # The rows any fold trained on: the whole window when cross-fitted.
    train = frame.loc[functools.reduce(pd.Index.union, (train.index for train, _ in folds))]
    data_window = {
        "train_start": stamp(train, "min"),
        "train_end": stamp(train, "max"),
        "valid_start": stamp(valid, "min"),
        "valid_end": stamp(valid, "max"),
        "n_train": round(n_train),
        "n_valid": len(valid),
        "n_rows": len(frame),
        "validation_days": validation_days,
        "validation": scheme,
        "regime": regime,
    }
    return TrainingResult(
        config=config,
        bandit=bandit,
        conversion_models=conversion_models,
        margin_models=margin_models,
        metrics=metrics,
        per_action_metrics=pd.DataFrame(per_action).T,
        validation=validation,
        data_window=data_window,
        input_example=frame[features].head(5).reset_index(drop=True),
    )
