"""Experiment analysis: the autonomous policy against the persistent holdout.

The holdout is a random, persistent set of contacts the policy never treats, so the contact is
the unit of randomisation and the unit of analysis: each contact's decisions in the analysed
period are summed (margin, revenue) or or-ed (converted) into one row, and "per user" means
per contact. The policy group is every non-holdout contact.

For each metric (margin per user, revenue per user, conversion) the analysis reports the
policy-minus-holdout difference with the always-valid confidence sequence and the fixed-horizon
interval (:mod:`journey_pipeline.learn.sequential`):

- overall;
- per cohort (lifecycle stage at the contact's first decision in the period): a valid
  comparison, since the holdout is random within every cohort;
- per action arm: policy contacts who received that action against the holdout. When the
  frame has an ``intended_action`` column (the action the policy would have taken for a
  holdout contact) the holdout side is restricted to it, which makes the comparison causal;
  without it the arm rows are descriptive (the policy chose whom to give each action).

It also gives the cumulative daily path of the overall margin lift (one row per decision date,
"no data" on days without matured outcomes) and a Qini curve for uplift scores.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

# Figure without pyplot: no global backend state, safe in worker threads.
from matplotlib.figure import Figure

from journey_pipeline.learn.sequential import (
    DEFAULT_MIN_GROUP_SIZE,
    DEFAULT_TIGHT_AT,
    difference_intervals,
    mixture_rho,
)

REQUIRED_COLUMNS = (
    "decision_id",
    "contact_id",
    "decided_at",
    "action",
    "propensity",
    "holdout",
    "reward",
    "revenue",
    "converted",
    "lifecycle_stage",
)
# metric name -> per-contact column it is computed from
METRICS = {"margin_per_user": "reward", "revenue_per_user": "revenue", "conversion": "converted"}
STATUS_OK = "ok"
STATUS_NO_DATA = "no data"
STATUS_INSUFFICIENT = "insufficient data"

SUMMARY_COLUMNS = [
    "segment_type",
    "segment",
    "metric",
    "n_policy",
    "n_holdout",
    "policy_mean",
    "holdout_mean",
    "lift",
    "relative_lift",
    "cs_low",
    "cs_high",
    "fixed_low",
    "fixed_high",
    "significant",
    "status",
]


@dataclass(frozen=True)
class ExperimentAnalysis:
    """Result of :func:`analyse`.

    ``summary``: one row per (segment_type in overall|cohort|action, segment, metric) with the
    columns of ``SUMMARY_COLUMNS``. ``daily``: one row per decision date with that day's
    counts and the cumulative margin-per-user lift and both intervals. ``excluded``: counts of
    rows left out (immature outcomes, missing rewards), so nothing disappears silently.
    """

    summary: pd.DataFrame
    daily: pd.DataFrame
    excluded: dict[str, int]
    alpha: float

    def overall(self, metric: str = "margin_per_user") -> pd.Series:
        """The overall summary row of ``metric``."""
        rows = self.summary[
            (self.summary["segment_type"] == "overall") & (self.summary["metric"] == metric)
        ]
        return rows.iloc[0]

    def metrics(self) -> dict[str, float]:
        """Flat overall figures (policy/holdout means and lifts) for guardrails and scoreboards."""
        flat: dict[str, float] = {}
        for metric in METRICS:
            row = self.overall(metric)
            flat[f"{metric}_policy"] = float(row["policy_mean"])
            flat[f"{metric}_holdout"] = float(row["holdout_mean"])
            flat[f"{metric}_lift"] = float(row["lift"])
            flat[f"{metric}_relative_lift"] = float(row["relative_lift"])
        return flat

    def to_markdown(self) -> str:
        """Summary and daily tables as Markdown."""
        return (
            "### Policy vs holdout\n\n"
            + self.summary.to_markdown(index=False, floatfmt=".4g")
            + "\n\n### Cumulative margin per user lift by day\n\n"
            + self.daily.to_markdown(index=False, floatfmt=".4g")
            + "\n"
        )


def _check_frame(decisions: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in decisions.columns]
    if missing:
        raise ValueError(f"decision frame lacks columns {missing}; needs {list(REQUIRED_COLUMNS)}")


def _per_contact(decisions: pd.DataFrame) -> pd.DataFrame:
    """One row per (contact, holdout): summed reward/revenue, any conversion, first stage."""
    ordered = decisions.sort_values("decided_at", kind="stable")
    return ordered.groupby(["contact_id", "holdout"], as_index=False, sort=False).agg(
        reward=("reward", "sum"),
        revenue=("revenue", "sum"),
        converted=("converted", "max"),
        lifecycle_stage=("lifecycle_stage", "first"),
    )


def _compare(
    policy_units: pd.DataFrame,
    holdout_units: pd.DataFrame,
    segment_type: str,
    segment: str,
    *,
    alpha: float,
    rho: float,
    min_group_size: int,
) -> list[dict[str, object]]:
    rows = []
    for metric, column in METRICS.items():
        x_t = policy_units[column].to_numpy(dtype=float)
        x_c = holdout_units[column].to_numpy(dtype=float)
        n_t, n_c = len(x_t), len(x_c)
        row: dict[str, object] = {
            "segment_type": segment_type,
            "segment": segment,
            "metric": metric,
            "n_policy": n_t,
            "n_holdout": n_c,
            "policy_mean": float(x_t.mean()) if n_t else np.nan,
            "holdout_mean": float(x_c.mean()) if n_c else np.nan,
        }
        if n_t == 0 or n_c == 0:
            row.update(
                lift=np.nan,
                relative_lift=np.nan,
                cs_low=np.nan,
                cs_high=np.nan,
                fixed_low=np.nan,
                fixed_high=np.nan,
                significant=False,
                status=STATUS_NO_DATA,
            )
            rows.append(row)
            continue
        est, cs_lo, cs_hi, fx_lo, fx_hi = difference_intervals(
            n_t,
            x_t.mean(),
            x_t.var(ddof=1) if n_t > 1 else np.nan,
            n_c,
            x_c.mean(),
            x_c.var(ddof=1) if n_c > 1 else np.nan,
            alpha=alpha,
            rho=rho,
            min_group_size=min_group_size,
        )
        lift = float(x_t.mean() - x_c.mean())
        holdout_mean = float(x_c.mean())
        enough = bool(np.isfinite(cs_lo))
        row.update(
            lift=lift,
            relative_lift=lift / holdout_mean if holdout_mean != 0 else np.nan,
            cs_low=float(cs_lo),
            cs_high=float(cs_hi),
            fixed_low=float(fx_lo),
            fixed_high=float(fx_hi),
            significant=bool(enough and (cs_lo > 0 or cs_hi < 0)),
            status=STATUS_OK if enough else STATUS_INSUFFICIENT,
        )
        rows.append(row)
    return rows


def _daily_path(
    decisions: pd.DataFrame,
    dates: pd.DatetimeIndex,
    *,
    alpha: float,
    rho: float,
    min_group_size: int,
) -> pd.DataFrame:
    """Cumulative margin-per-user lift at the end of each date; 'no data' on empty days.

    Per-contact totals are accumulated day by day (one pass over the decisions) rather than
    regrouped for every day, so a long experiment costs days x contacts, not days x decisions.
    """
    decision_day = decisions["decided_at"].dt.normalize().to_numpy()
    # A contact is one unit per holdout flag, exactly as in _per_contact.
    units = decisions.groupby(["contact_id", "holdout"], sort=False).ngroup().to_numpy()
    n_units = int(units.max()) + 1 if len(units) else 0
    rewards = decisions["reward"].to_numpy(dtype=float)
    is_holdout = decisions["holdout"].to_numpy(dtype=bool)
    unit_holdout = np.zeros(n_units, dtype=bool)
    unit_holdout[units] = is_holdout
    totals = np.zeros(n_units)
    seen = np.zeros(n_units, dtype=bool)
    if len(dates):
        # Decisions before the first date still count towards the cumulative totals.
        earlier = decision_day < dates[0].to_datetime64()
        np.add.at(totals, units[earlier], rewards[earlier])
        seen[units[earlier]] = True
    rows = []
    for day in dates:
        today = decision_day == day.to_datetime64()
        np.add.at(totals, units[today], rewards[today])
        seen[units[today]] = True
        policy = totals[seen & ~unit_holdout]
        holdout = totals[seen & unit_holdout]
        n_t, n_c = len(policy), len(holdout)
        row: dict[str, object] = {
            "date": day.date(),
            "decisions_policy": int((today & ~is_holdout).sum()),
            "decisions_holdout": int((today & is_holdout).sum()),
            "cum_users_policy": n_t,
            "cum_users_holdout": n_c,
        }
        if n_t and n_c:
            est, cs_lo, cs_hi, fx_lo, fx_hi = difference_intervals(
                n_t,
                policy.mean(),
                policy.var(ddof=1) if n_t > 1 else np.nan,
                n_c,
                holdout.mean(),
                holdout.var(ddof=1) if n_c > 1 else np.nan,
                alpha=alpha,
                rho=rho,
                min_group_size=min_group_size,
            )
            row.update(
                lift=float(policy.mean() - holdout.mean()),
                cs_low=float(cs_lo),
                cs_high=float(cs_hi),
                fixed_low=float(fx_lo),
                fixed_high=float(fx_hi),
            )
        else:
            row.update(
                lift=np.nan, cs_low=np.nan, cs_high=np.nan, fixed_low=np.nan, fixed_high=np.nan
            )
        if not today.any():
            row["status"] = STATUS_NO_DATA
        elif np.isfinite(row["cs_low"]):
            row["status"] = STATUS_OK
        else:
            row["status"] = STATUS_INSUFFICIENT
        rows.append(row)
    columns = [
        "date",
        "decisions_policy",
        "decisions_holdout",
        "cum_users_policy",
        "cum_users_holdout",
        "lift",
        "cs_low",
        "cs_high",
        "fixed_low",
        "fixed_high",
        "status",
    ]
    return pd.DataFrame(rows, columns=columns)


def analyse(
    decisions: pd.DataFrame,
    *,
    alpha: float = 0.05,
    start_date: str | pd.Timestamp | None = None,
    end_date: str | pd.Timestamp | None = None,
    tight_at: float = DEFAULT_TIGHT_AT,
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE,
) -> ExperimentAnalysis:
    """Policy vs holdout, overall, per cohort and per action arm, with both intervals.

    Input: a frame of live decisions with outcomes (``REQUIRED_COLUMNS``; optional ``matured``
    and ``intended_action``). Rows whose outcome window has not closed (``matured`` False) or
    whose reward is missing are excluded and counted in ``excluded``. ``start_date`` /
    ``end_date`` bound the daily path (default: the first and last decision dates), so days
    without decisions appear as "no data" rows. Output: :class:`ExperimentAnalysis`.
    """
    _check_frame(decisions)
    frame = decisions.copy()
    frame["decided_at"] = pd.to_datetime(frame["decided_at"])
    frame["holdout"] = frame["holdout"].astype(bool)
    frame["converted"] = frame["converted"].astype(float)
    excluded = {"immature": 0, "missing_reward": 0}
    if "matured" in frame.columns:
        immature = ~frame["matured"].astype(bool)
        excluded["immature"] = int(immature.sum())
        frame = frame[~immature]
    missing = frame["reward"].isna() | frame["revenue"].isna()
    excluded["missing_reward"] = int(missing.sum())
    frame = frame[~missing]

    rho = mixture_rho(tight_at, alpha)
    kwargs = {"alpha": alpha, "rho": rho, "min_group_size": min_group_size}
    units = _per_contact(frame)
    policy_units = units[~units["holdout"]]
    holdout_units = units[units["holdout"]]
    rows = _compare(policy_units, holdout_units, "overall", "all", **kwargs)

    stages = sorted(frame["lifecycle_stage"].dropna().unique())
    for stage in stages:
        rows += _compare(
            policy_units[policy_units["lifecycle_stage"] == stage],
            holdout_units[holdout_units["lifecycle_stage"] == stage],
            "cohort",
            str(stage),
            **kwargs,
        )

    policy_decisions = frame[~frame["holdout"]]
    holdout_decisions = frame[frame["holdout"]]
    for action in sorted(policy_decisions["action"].unique()):
        if "intended_action" in frame.columns:
            arm_holdout = _per_contact(
                holdout_decisions[holdout_decisions["intended_action"] == action]
            )
        else:
            arm_holdout = holdout_units
        rows += _compare(
            _per_contact(policy_decisions[policy_decisions["action"] == action]),
            arm_holdout,
            "action",
            str(action),
            **kwargs,
        )
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)

    if frame.empty and (start_date is None or end_date is None):
        dates = pd.DatetimeIndex([])
    else:
        first = pd.Timestamp(start_date) if start_date is not None else frame["decided_at"].min()
        last = pd.Timestamp(end_date) if end_date is not None else frame["decided_at"].max()
        dates = pd.date_range(first.normalize(), last.normalize(), freq="D")
    daily = _daily_path(frame, dates, **kwargs)
    return ExperimentAnalysis(summary=summary, daily=daily, excluded=excluded, alpha=alpha)


# --- plots -----------------------------------------------------------------------------------


def _figure_bytes(fig: Figure, path: str | Path | None) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    png = buffer.getvalue()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(png)
    return png


def plot_daily_lift(analysis: ExperimentAnalysis, path: str | Path | None = None) -> bytes:
    """PNG of the cumulative margin-per-user lift with its CS and fixed-horizon bands.

    Returns the PNG bytes and also writes them to ``path`` when given.
    """
    daily = analysis.daily.copy()
    # Days with no data carry None in the interval columns: plot them as gaps.
    for column in ("cs_low", "cs_high", "fixed_low", "fixed_high", "lift"):
        daily[column] = pd.to_numeric(daily[column], errors="coerce").astype(float)
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    dates = pd.to_datetime(daily["date"])
    ax.fill_between(dates, daily["cs_low"], daily["cs_high"], alpha=0.2, label="always-valid CS")
    ax.fill_between(
        dates, daily["fixed_low"], daily["fixed_high"], alpha=0.35, label="fixed-horizon interval"
    )
    ax.plot(dates, daily["lift"], marker="o", markersize=3, label="lift")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_ylabel("margin per user: policy - holdout")
    ax.set_title(f"Policy vs holdout ({(1 - analysis.alpha):.0%} intervals)")
    ax.legend(loc="best")
    fig.autofmt_xdate()
    return _figure_bytes(fig, path)


# --- uplift (Qini) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class QiniCurve:
    """Qini curve points and summary.

    ``curve``: columns ``fraction`` (share of units targeted, best scores first),
    ``n_targeted``, ``qini`` (incremental outcome among the targeted, treated outcome minus
    control outcome scaled to the treated count) and ``random`` (the same for random
    targeting). ``coefficient``: mean gap between ``qini`` and ``random`` (area between the
    curves per unit of fraction; > 0 means the scores rank uplift better than chance).
    """

    curve: pd.DataFrame
    coefficient: float

    def to_markdown(self, points: int = 11) -> str:
        """The curve at ``points`` evenly spaced fractions, as Markdown."""
        idx = np.linspace(0, len(self.curve) - 1, points).round().astype(int)
        return self.curve.iloc[idx].to_markdown(index=False, floatfmt=".4g")


def qini_curve(
    uplift_scores: Sequence[float] | np.ndarray,
    treated: Sequence[bool] | np.ndarray,
    outcome: Sequence[float] | np.ndarray,
) -> QiniCurve:
    """Qini curve of uplift scores on a randomised sample.

    Inputs (equal length): ``uplift_scores`` (higher = expected to gain more from treatment,
    e.g. the reward model's expected margin of the offer minus that of ``no_offer``),
    ``treated`` (True for treated, False for control/holdout) and ``outcome``. Units are ranked
    by score, ties in input order. ``Q(k) = Y_T(k) - Y_C(k) N_T(k) / N_C(k)`` over the top
    ``k``. Raises ``ValueError`` on mismatched lengths, NaNs or a sample without both groups.
    """
    scores = np.asarray(uplift_scores, dtype=float)
    is_treated = np.asarray(treated, dtype=bool)
    y = np.asarray(outcome, dtype=float)
    if not (len(scores) == len(is_treated) == len(y)):
        raise ValueError("uplift_scores, treated and outcome must have the same length")
    if np.isnan(scores).any() or np.isnan(y).any():
        raise ValueError("uplift_scores and outcome must not contain NaN")
    if is_treated.all() or not is_treated.any():
        raise ValueError("a Qini curve needs both treated and control units")
    order = np.argsort(-scores, kind="stable")
    t_sorted, y_sorted = is_treated[order], y[order]
    n_t = np.cumsum(t_sorted)
    n_c = np.cumsum(~t_sorted)
    y_t = np.cumsum(np.where(t_sorted, y_sorted, 0.0))
    y_c = np.cumsum(np.where(t_sorted, 0.0, y_sorted))
    # Until the first control unit is reached there is nothing to subtract.
    scaled_control = np.divide(y_c * n_t, n_c, out=np.zeros_like(y_c), where=n_c > 0)
    qini = np.concatenate([[0.0], y_t - scaled_control])
    n = len(y)
    fraction = np.arange(n + 1) / n
    random = fraction * qini[-1]
    curve = pd.DataFrame(
        {"fraction": fraction, "n_targeted": np.arange(n + 1), "qini": qini, "random": random}
    )
    coefficient = float(np.trapezoid(qini - random, fraction))
    return QiniCurve(curve=curve, coefficient=coefficient)


def uplift_scores(expected_rewards: pd.Series, control_action: str = "no_offer") -> pd.Series:
    """The reward model's predicted uplift per decision, the score a Qini curve ranks by.

    Input: ``expected_rewards`` as logged (JSON text or dicts ``{action: expected margin}``).
    Output: best expected margin among the other actions minus that of ``control_action``;
    NaN where the control or every other action is missing.
    """

    def score(blob: object) -> float:
        mapping = json.loads(blob) if isinstance(blob, str | bytes) else blob
        if not isinstance(mapping, dict) or mapping.get(control_action) is None:
            return float("nan")
        others = [float(v) for k, v in mapping.items() if k != control_action and v is not None]
        return max(others) - float(mapping[control_action]) if others else float("nan")

    return pd.Series(
        [score(b) for b in expected_rewards], index=expected_rewards.index, dtype=float
    )


def plot_qini(qini: QiniCurve, path: str | Path | None = None) -> bytes:
    """PNG of a Qini curve against random targeting; bytes returned, written to ``path`` too."""
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    ax.plot(qini.curve["fraction"], qini.curve["qini"], label="model")
    ax.plot(qini.curve["fraction"], qini.curve["random"], linestyle="--", label="random")
    ax.set_xlabel("fraction of contacts targeted")
    ax.set_ylabel("incremental outcome")
    ax.set_title(f"Qini curve (coefficient {qini.coefficient:.3g})")
    ax.legend(loc="best")
    return _figure_bytes(fig, path)
