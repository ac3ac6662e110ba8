"""Guardrails: when to roll the champion back, and when performance has degraded.

- :func:`evaluate_guardrail` breaches when the champion policy, with confidence, loses more
  margin per user than allowed against the persistent holdout (the upper end of the
  always-valid CS of policy - holdout is below ``-max_margin_loss_per_user``), or when a
  configured business threshold on the analysis' overall figures breaks. The CS, not the
  fixed-horizon interval, is used because the guardrail is checked every day.
- :func:`performance_degraded` implements "retrain when AUC drops 3% and revenue per user drops
  1% for seven consecutive days".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

from journey_pipeline.learn.experiment import STATUS_OK, ExperimentAnalysis


@dataclass(frozen=True)
class BusinessThreshold:
    """Bounds on one overall figure of :meth:`ExperimentAnalysis.metrics` (e.g.
    ``conversion_policy``): breached below ``minimum`` or above ``maximum``."""

    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True)
class GuardrailVerdict:
    """``breach`` and the human-readable ``reasons`` for it; ``notes`` explain checks that
    could not be made (e.g. too little data), which never breach on their own."""

    breach: bool
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _as_threshold(name: str, spec: BusinessThreshold | Mapping[str, float]) -> BusinessThreshold:
    if isinstance(spec, BusinessThreshold):
        return spec
    unknown = set(spec) - {"min", "max"}
    if unknown:
        raise ValueError(
            f"business threshold {name!r}: unknown keys {sorted(unknown)}; use min/max"
        )
    return BusinessThreshold(minimum=spec.get("min"), maximum=spec.get("max"))


def evaluate_guardrail(
    analysis: ExperimentAnalysis,
    max_margin_loss_per_user: float,
    business_thresholds: Mapping[str, BusinessThreshold | Mapping[str, float]] | None = None,
) -> GuardrailVerdict:
    """Decide whether the champion must be rolled back.

    Inputs: an :class:`ExperimentAnalysis` of the champion's decisions,
    ``max_margin_loss_per_user`` (>= 0, in currency per user) and ``business_thresholds``
    mapping a name of ``analysis.metrics()`` to a :class:`BusinessThreshold` or
    ``{"min": x, "max": y}``. Output: a :class:`GuardrailVerdict`. A threshold on an unknown
    figure raises ``ValueError`` (a configuration error); a figure that is NaN (no data) is
    noted, not breached.
    """
    if max_margin_loss_per_user < 0:
        raise ValueError("max_margin_loss_per_user must be >= 0 (a loss allowance)")
    reasons: list[str] = []
    notes: list[str] = []
    margin = analysis.overall("margin_per_user")
    if margin["status"] != STATUS_OK:
        notes.append(
            f"margin guardrail not evaluated: {margin['status']} "
            f"({margin['n_policy']} policy and {margin['n_holdout']} holdout users)"
        )
    elif margin["cs_high"] < -max_margin_loss_per_user:
        reasons.append(
            f"margin per user is below the holdout's by more than {max_margin_loss_per_user:g} "
            f"with confidence: lift {margin['lift']:.4g}, always-valid "
            f"{1 - analysis.alpha:.0%} interval [{margin['cs_low']:.4g}, {margin['cs_high']:.4g}]"
        )

    figures = analysis.metrics()
    for name, spec in (business_thresholds or {}).items():
        if name not in figures:
            raise ValueError(
                f"business threshold on unknown figure {name!r}; known: {sorted(figures)}"
            )
        threshold = _as_threshold(name, spec)
        value = figures[name]
        if math.isnan(value):
            notes.append(f"{name} has no data; threshold not evaluated")
            continue
        if threshold.minimum is not None and value < threshold.minimum:
            reasons.append(f"{name} = {value:.4g} is below its minimum {threshold.minimum:g}")
        if threshold.maximum is not None and value > threshold.maximum:
            reasons.append(f"{name} = {value:.4g} is above its maximum {threshold.maximum:g}")
    return GuardrailVerdict(breach=bool(reasons), reasons=reasons, notes=notes)


def degraded_days(
    daily_metrics: pd.DataFrame,
    auc_drop: float = 0.03,
    rpu_drop: float = 0.01,
    *,
    baseline: Mapping[str, float] | None = None,
    baseline_days: int = 7,
) -> pd.DataFrame:
    """Flag each day whose AUC and revenue per user are both below their baseline.

    Input: ``daily_metrics`` with columns ``date``, ``auc``, ``revenue_per_user`` (one row per
    day; NaN for a day without data). A day is degraded when ``auc <= base_auc * (1 -
    auc_drop)`` and ``revenue_per_user <= base_rpu - |base_rpu| * rpu_drop`` (relative drops).
    ``baseline`` gives ``auc`` and ``revenue_per_user`` explicitly; otherwise it is the mean of
    the first ``baseline_days`` rows (the period after the model went live). Output: the
    frame sorted by date with ``degraded`` (bool) and ``base_auc``/``base_rpu`` added.
    """
    missing = {"date", "auc", "revenue_per_user"} - set(daily_metrics.columns)
    if missing:
        raise ValueError(f"daily_metrics lacks columns {sorted(missing)}")
    frame = daily_metrics.copy()
    frame["date"] = pd.to_datetime(frame["date"]).dt.normalize()
    frame = frame.sort_values("date").reset_index(drop=True)
    if baseline is None:
        head = frame.head(baseline_days)
        base_auc, base_rpu = float(head["auc"].mean()), float(head["revenue_per_user"].mean())
    else:
        base_auc, base_rpu = float(baseline["auc"]), float(baseline["revenue_per_user"])
    frame["base_auc"] = base_auc
    frame["base_rpu"] = base_rpu
    # NaN comparisons are False: a day without data is never counted as degraded.
    frame["degraded"] = (frame["auc"] <= base_auc * (1 - auc_drop)) & (
        frame["revenue_per_user"] <= base_rpu - abs(base_rpu) * rpu_drop
    )
    return frame


def performance_degraded(
    daily_metrics: pd.DataFrame,
    auc_drop: float = 0.03,
    rpu_drop: float = 0.01,
    days: int = 7,
    *,
    baseline: Mapping[str, float] | None = None,
    baseline_days: int = 7,
) -> bool:
    """True when the last ``days`` calendar days are all degraded (see :func:`degraded_days`).

    The days must be consecutive: a missing date or a day without data breaks the run. With an
    implicit baseline, the baseline rows may not overlap the run being judged, so fewer than
    ``baseline_days + days`` rows give False.
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    if baseline is None and len(daily_metrics) < baseline_days + days:
        return False
    flagged = degraded_days(
        daily_metrics, auc_drop, rpu_drop, baseline=baseline, baseline_days=baseline_days
    )
    last = flagged.tail(days)
    if len(last) < days:
        return False
    consecutive = (last["date"].diff().dropna() == pd.Timedelta(days=1)).all()
    return bool(consecutive and last["degraded"].all())
