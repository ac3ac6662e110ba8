"""Guardrail verdicts on experiment analyses, and the performance-degradation rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from journey_pipeline.learn.experiment import analyse
from journey_pipeline.learn.guardrails import (
    BusinessThreshold,
    degraded_days,
    evaluate_guardrail,
    performance_degraded,
)


def experiment(effect, seed=0, n=4000):
    """One decision per contact; the policy changes each contact's margin by ``effect``."""
    rng = np.random.default_rng(seed)
    holdout = rng.random(n) < 0.2
    revenue = (rng.random(n) < 0.3) * rng.lognormal(3.0, 0.4, n)
    reward = revenue + np.where(holdout, 0.0, effect)
    return pd.DataFrame(
        {
            "decision_id": [f"D{i}" for i in range(n)],
            "contact_id": [f"C{i}" for i in range(n)],
            "decided_at": pd.Timestamp("2026-02-01") + pd.to_timedelta(rng.integers(0, 5, n), "D"),
            "action": np.where(holdout, "no_offer", "offer_b"),
            "propensity": 1.0,
            "holdout": holdout,
            "reward": reward,
            "revenue": revenue,
            "converted": revenue > 0,
            "lifecycle_stage": "lead",
        }
    )


def test_a_harmful_policy_breaches_and_a_harmless_one_does_not():
    harmful = evaluate_guardrail(analyse(experiment(effect=-6.0)), max_margin_loss_per_user=1.0)
    assert harmful.breach
    assert "below the holdout's by more than 1" in harmful.reasons[0]
    fine = evaluate_guardrail(analyse(experiment(effect=0.0)), max_margin_loss_per_user=1.0)
    assert not fine.breach and fine.reasons == []
    # A loss within the allowance is tolerated even when it is certain.
    tolerated = evaluate_guardrail(analyse(experiment(effect=-6.0)), max_margin_loss_per_user=20.0)
    assert not tolerated.breach


def test_business_thresholds_break_independently_of_the_margin():
    analysis = analyse(experiment(effect=0.0))
    conversion = analysis.metrics()["conversion_policy"]
    verdict = evaluate_guardrail(
        analysis,
        max_margin_loss_per_user=100.0,
        business_thresholds={
            "conversion_policy": {"min": conversion + 0.05},
            "revenue_per_user_policy": BusinessThreshold(maximum=1e9),
        },
    )
    assert verdict.breach
    assert verdict.reasons == [
        f"conversion_policy = {conversion:.4g} is below its minimum {conversion + 0.05:g}"
    ]
    with pytest.raises(ValueError, match="unknown figure"):
        evaluate_guardrail(analysis, 1.0, {"churn": {"max": 0.1}})
    with pytest.raises(ValueError, match="unknown keys"):
        evaluate_guardrail(analysis, 1.0, {"conversion_policy": {"floor": 0.1}})


def test_too_little_data_is_noted_not_breached():
    verdict = evaluate_guardrail(analyse(experiment(effect=-50.0, n=60)), 0.0)
    assert not verdict.breach
    assert "insufficient data" in verdict.notes[0]


def daily(auc, rpu, start="2026-03-01"):
    return pd.DataFrame(
        {
            "date": pd.date_range(start, periods=len(auc), freq="D"),
            "auc": auc,
            "revenue_per_user": rpu,
        }
    )


def test_seven_consecutive_degraded_days_trigger_retraining():
    good, bad = [0.80] * 7, [0.77] * 7  # a 3.75% AUC drop
    frame = daily(good + bad, [10.0] * 7 + [9.8] * 7)  # and a 2% revenue drop
    assert performance_degraded(frame)
    assert degraded_days(frame)["degraded"].tolist() == [False] * 7 + [True] * 7
    # Six bad days are not enough, and only one of the two drops is not enough either.
    assert not performance_degraded(daily(good + bad[:6], [10.0] * 7 + [9.8] * 6))
    assert not performance_degraded(daily(good + bad, [10.0] * 14))
    assert not performance_degraded(daily(good + [0.79] * 7, [10.0] * 7 + [9.8] * 7))


def test_gaps_and_days_without_data_break_the_run():
    frame = daily([0.80] * 7 + [0.77] * 8, [10.0] * 7 + [9.8] * 8)
    with_gap = frame.drop(index=10)  # a missing calendar day inside the last seven
    assert not performance_degraded(with_gap)
    no_data = frame.copy()
    no_data.loc[12, "auc"] = np.nan
    assert not performance_degraded(no_data)
    assert performance_degraded(frame.tail(7), baseline={"auc": 0.80, "revenue_per_user": 10.0})
    assert not performance_degraded(frame.tail(7))  # no implicit baseline from the run itself
