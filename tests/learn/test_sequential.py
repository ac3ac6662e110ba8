"""Confidence sequences: valid under continuous monitoring, and still able to detect effects."""

from __future__ import annotations

import math

import numpy as np
import pytest

from journey_pipeline.learn.sequential import (
    confidence_sequence,
    difference_in_means,
    difference_intervals,
    fixed_horizon_interval,
    mixture_rho,
    normal_mixture_radius,
)

DAYS = 60
ALPHA = 0.05


def daily_margins(rng, reps, n_per_day, effect=0.0):
    """Zero-inflated, skewed margins like real ones: most contacts buy nothing."""
    buys = rng.random((reps, DAYS, n_per_day)) < 0.2
    amounts = rng.lognormal(3.0, 0.5, size=(reps, DAYS, n_per_day))
    return buys * amounts + effect


def cumulative_moments(x):
    """Counts, means and ddof=1 variances after each day, per repetition."""
    n = np.arange(1, DAYS + 1) * x.shape[2]
    sums = x.sum(axis=2).cumsum(axis=1)
    squares = (x**2).sum(axis=2).cumsum(axis=1)
    mean = sums / n
    var = (squares - n * mean**2) / (n - 1)
    return n[None, :], mean, var


def ever_rejects(rng, reps, n_treat, n_control, effect):
    nt, mt, vt = cumulative_moments(daily_margins(rng, reps, n_treat, effect))
    nc, mc, vc = cumulative_moments(daily_margins(rng, reps, n_control))
    _, cs_lo, cs_hi, fx_lo, fx_hi = difference_intervals(nt, mt, vt, nc, mc, vc, alpha=ALPHA)
    with np.errstate(invalid="ignore"):
        cs_hits = (cs_lo > 0) | (cs_hi < 0)
        fixed_hits = (fx_lo > 0) | (fx_hi < 0)
    return cs_hits.any(axis=1).mean(), fixed_hits.any(axis=1).mean(), cs_hits


@pytest.mark.parametrize(("n_treat", "n_control"), [(50, 50), (90, 10)])
def test_no_effect_is_rarely_ever_declared_over_60_daily_looks(n_treat, n_control):
    reps = 2000
    rng = np.random.default_rng(n_treat)
    cs_rate, fixed_rate, _ = ever_rejects(rng, reps, n_treat, n_control, effect=0.0)
    # Monte Carlo slack: 3 standard errors of a proportion at alpha over `reps` repetitions.
    slack = 3 * math.sqrt(ALPHA * (1 - ALPHA) / reps)
    assert cs_rate <= ALPHA + slack, f"CS declared a null difference in {cs_rate:.1%} of runs"
    # The simulation is able to see the peeking problem: daily fixed-horizon looks do fail.
    assert fixed_rate > 3 * ALPHA


@pytest.mark.parametrize(("n_treat", "n_control", "effect"), [(50, 50, 2.0), (90, 10, 4.0)])
def test_a_real_effect_is_eventually_detected(n_treat, n_control, effect):
    rng = np.random.default_rng(7)
    # Mean margin is about 4.6 per contact-day (sd about 10.6); the policy adds `effect`.
    cs_rate, _, hits = ever_rejects(rng, 300, n_treat, n_control, effect=effect)
    assert cs_rate >= 0.95
    assert hits[:, -1].mean() >= 0.9  # and by the last day it is excluded from zero


def test_formula_matches_the_normal_mixture_boundary():
    rho = mixture_rho(1000, ALPHA)
    t = 400.0
    expected = math.sqrt(
        2 * (t * rho**2 + 1) / (t**2 * rho**2) * math.log(math.sqrt(t * rho**2 + 1) / ALPHA)
    )
    assert float(normal_mixture_radius(t, ALPHA, rho)) == pytest.approx(expected)
    # The CS is wider than the fixed-horizon interval at every sample size, and shrinks.
    radii = normal_mixture_radius(np.array([100.0, 1000.0, 10000.0]), ALPHA, rho)
    assert (radii * np.sqrt([100.0, 1000.0, 10000.0]) > 1.96).all()
    assert radii[0] > radii[1] > radii[2]


def test_two_sample_interfaces_agree():
    rng = np.random.default_rng(3)
    treat, control = rng.normal(1.0, 2.0, 400), rng.normal(0.0, 2.0, 300)
    cs = confidence_sequence(treat, control)
    fixed = fixed_horizon_interval(treat, control)
    full = difference_in_means(treat, control)
    assert cs.estimate == pytest.approx(treat.mean() - control.mean())
    assert (cs.low, cs.high) == (full.cs_low, full.cs_high)
    assert (fixed.low, fixed.high) == (full.fixed_low, full.fixed_high)
    assert cs.low < fixed.low < fixed.high < cs.high
    se = math.sqrt(treat.var(ddof=1) / 400 + control.var(ddof=1) / 300)
    assert fixed.high - fixed.estimate == pytest.approx(1.959964 * se, rel=1e-5)
    assert full.significant


def test_small_groups_give_no_interval_rather_than_a_wrong_one():
    small = difference_in_means([1.0, 2.0, 3.0], [1.0, 2.0])
    assert small.estimate == pytest.approx(0.5)
    assert math.isnan(small.cs_low) and math.isnan(small.fixed_high)
    assert not small.significant
    empty = difference_in_means([], [1.0, 2.0])
    assert math.isnan(empty.estimate)
    with pytest.raises(ValueError, match="NaN"):
        difference_in_means([1.0, float("nan")], [1.0])
