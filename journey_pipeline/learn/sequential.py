"""Always-valid confidence sequences for the difference in means, treatment vs holdout.

The experiment is looked at every day. A fixed-horizon 95% interval checked daily declares a
spurious difference far more often than 5% of the time; a confidence sequence (CS) is a
sequence of intervals ``C_t`` that cover the true difference at *every* look simultaneously,
``P(for all t: delta in C_t) >= 1 - alpha``, so it may be checked as often as one likes and
the experiment stopped whenever it excludes zero.

Method: the asymptotic confidence sequence of Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas
("Time-uniform central limit theory and asymptotic confidence sequences", Ann. Statist. 2024,
Thm 2.2), which applies the normal-mixture boundary of Howard, Ramdas, McAuliffe and Sekhon
("Time-uniform, nonparametric, nonasymptotic confidence sequences", Ann. Statist. 2021) to a
sample mean with an estimated variance. For ``t`` observations with mean ``m_t`` and standard
deviation ``s_t``::

    C_t = m_t  +/-  s_t * sqrt( 2 (t rho^2 + 1) / (t^2 rho^2) * log( sqrt(t rho^2 + 1) / alpha ) )

The boundary comes from Ville's inequality on the normal-mixture martingale
``(1 + t rho^2)^(-1/2) exp(rho^2 S_t^2 / (2 (1 + t rho^2)))``, which is two-sided already.
``rho`` only decides at which sample size the CS is tightest; it must be fixed before looking
(never chosen from the data). For ``t*`` the sample size where tightness matters most,
``rho^2 = (-2 log alpha + log(-2 log alpha + 1)) / t*`` (Waudby-Smith et al., Sec. 2.3).

Two groups: with ``n_T`` treated and ``n_C`` holdout units, the difference of means has
variance ``V = s_T^2 / n_T + s_C^2 / n_C``; the CS uses ``t = n_T + n_C`` and the per-unit
standard deviation ``sqrt(t V)``, which is the AsympCS on the inverse-probability-weighted
pseudo-outcomes ``t/n_T * Y`` (treated) and ``-t/n_C * Y`` (holdout) whose mean is the
difference of means. The fixed-horizon interval beside it is the Welch normal interval
``diff +/- z_{1-alpha/2} sqrt(V)``.

The guarantee is asymptotic, so no interval is reported until each group has
``min_group_size`` units (default 100): with zero-inflated margins and a 10% holdout, looking
from the first day without this burn-in declared a null difference in about 14% of simulated
60-day experiments; with it, under 5% (tests/learn/test_sequential.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import NamedTuple

import numpy as np

DEFAULT_TIGHT_AT = 1_000  # total units at which the CS is tightest; fixed, never data-driven
# The CS is asymptotic: with skewed margins (most customers buy nothing) and a small holdout, the
# sample variance of a few dozen units is too often near zero and early looks over-reject.
# Below this many units in either group no interval is reported (simulated in the tests).
DEFAULT_MIN_GROUP_SIZE = 100


class Interval(NamedTuple):
    """A point estimate with its interval; NaNs when there is too little data."""

    estimate: float
    low: float
    high: float


def mixture_rho(tight_at: float = DEFAULT_TIGHT_AT, alpha: float = 0.05) -> float:
    """The mixture scale ``rho`` that makes the CS tightest at ``tight_at`` observations."""
    if tight_at <= 0:
        raise ValueError(f"tight_at must be positive, got {tight_at!r}")
    log_term = -2.0 * math.log(alpha)
    return math.sqrt((log_term + math.log(log_term + 1.0)) / tight_at)


def normal_mixture_radius(t: np.ndarray | float, alpha: float, rho: float) -> np.ndarray:
    """Half-width of the CS per unit standard deviation after ``t`` observations (vectorised).

    Input: ``t`` (scalar or array of sample sizes, > 0), ``alpha``, ``rho``. Output: array of
    ``sqrt(2 (t rho^2 + 1) / (t^2 rho^2) * log(sqrt(t rho^2 + 1) / alpha))``.
    """
    t = np.asarray(t, dtype=float)
    rho2 = rho * rho
    return np.sqrt(
        2.0 * (t * rho2 + 1.0) / (t * t * rho2) * np.log(np.sqrt(t * rho2 + 1.0) / alpha)
    )


def difference_intervals(
    n_treat: np.ndarray | float,
    mean_treat: np.ndarray | float,
    var_treat: np.ndarray | float,
    n_control: np.ndarray | float,
    mean_control: np.ndarray | float,
    var_control: np.ndarray | float,
    *,
    alpha: float = 0.05,
    rho: float | None = None,
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CS and fixed-horizon interval for ``mean_treat - mean_control`` from group moments.

    Inputs are per-group counts, means and (ddof=1) variances, scalars or equal-shaped arrays
    (one entry per look, for cumulative daily statistics). Output: ``(estimate, cs_low,
    cs_high, fixed_low, fixed_high)`` arrays; entries where a group has fewer than
    ``min_group_size`` units (at least 2, to estimate a variance) are NaN.
    """
    rho = mixture_rho(alpha=alpha) if rho is None else rho
    n_t = np.asarray(n_treat, dtype=float)
    n_c = np.asarray(n_control, dtype=float)
    min_n = max(2, min_group_size)
    ok = (n_t >= min_n) & (n_c >= min_n)
    safe_t = np.where(ok, n_t, float(min_n))
    safe_c = np.where(ok, n_c, float(min_n))
    estimate = np.asarray(mean_treat, dtype=float) - np.asarray(mean_control, dtype=float)
    variance = (
        np.asarray(var_treat, dtype=float) / safe_t + np.asarray(var_control, dtype=float) / safe_c
    )
    std_error = np.sqrt(variance)
    total = safe_t + safe_c
    cs_half = np.sqrt(total) * std_error * normal_mixture_radius(total, alpha, rho)
    fixed_half = NormalDist().inv_cdf(1 - alpha / 2) * std_error
    nan = np.nan
    return (
        np.where(ok, estimate, nan),
        np.where(ok, estimate - cs_half, nan),
        np.where(ok, estimate + cs_half, nan),
        np.where(ok, estimate - fixed_half, nan),
        np.where(ok, estimate + fixed_half, nan),
    )


def _moments(x: np.ndarray) -> tuple[int, float, float]:
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    var = float(x.var(ddof=1)) if n > 1 else math.nan
    return n, mean, var


def _clean(name: str, values: object) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    if np.isnan(x).any():
        raise ValueError(f"{name} contains {int(np.isnan(x).sum())} NaN outcomes")
    return x


@dataclass(frozen=True)
class DifferenceInMeans:
    """Treatment minus control with both intervals at level ``1 - alpha``."""

    estimate: float
    cs_low: float
    cs_high: float
    fixed_low: float
    fixed_high: float
    n_treat: int
    n_control: int
    mean_treat: float
    mean_control: float
    alpha: float

    @property
    def significant(self) -> bool:
        """True when the always-valid CS excludes zero."""
        return bool(self.cs_low > 0 or self.cs_high < 0)

    def as_dict(self) -> dict[str, float | int]:
        """Plain dict of the fields (for tables)."""
        return asdict(self)


def difference_in_means(
    x_treat: object,
    x_control: object,
    alpha: float = 0.05,
    *,
    rho: float | None = None,
    tight_at: float = DEFAULT_TIGHT_AT,
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE,
) -> DifferenceInMeans:
    """Compare two samples: the difference of means with its CS and fixed-horizon interval.

    ``x_treat`` and ``x_control`` are 1-D arrays of per-unit outcomes; ``rho`` overrides the
    mixture scale derived from ``tight_at``. With fewer than ``min_group_size`` units in a
    group the intervals are NaN (and, with no units, the estimate too).
    """
    rho = mixture_rho(tight_at, alpha) if rho is None else rho
    n_t, m_t, v_t = _moments(_clean("x_treat", x_treat))
    n_c, m_c, v_c = _moments(_clean("x_control", x_control))
    est, cs_lo, cs_hi, fx_lo, fx_hi = difference_intervals(
        n_t, m_t, v_t, n_c, m_c, v_c, alpha=alpha, rho=rho, min_group_size=min_group_size
    )
    estimate = m_t - m_c if (n_t and n_c) else math.nan
    return DifferenceInMeans(
        estimate=float(estimate),
        cs_low=float(cs_lo),
        cs_high=float(cs_hi),
        fixed_low=float(fx_lo),
        fixed_high=float(fx_hi),
        n_treat=n_t,
        n_control=n_c,
        mean_treat=m_t,
        mean_control=m_c,
        alpha=alpha,
    )


def confidence_sequence(
    x_treat: object,
    x_control: object,
    alpha: float = 0.05,
    *,
    rho: float | None = None,
    tight_at: float = DEFAULT_TIGHT_AT,
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE,
) -> Interval:
    """Always-valid ``(estimate, low, high)`` for ``mean(x_treat) - mean(x_control)``.

    Call it at every look with all data so far. See the module docstring for the formula.
    """
    d = difference_in_means(
        x_treat, x_control, alpha, rho=rho, tight_at=tight_at, min_group_size=min_group_size
    )
    return Interval(d.estimate, d.cs_low, d.cs_high)


def fixed_horizon_interval(
    x_treat: object,
    x_control: object,
    alpha: float = 0.05,
    *,
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE,
) -> Interval:
    """Welch normal ``(estimate, low, high)``: valid only for one pre-planned look."""
    d = difference_in_means(x_treat, x_control, alpha, min_group_size=min_group_size)
    return Interval(d.estimate, d.fixed_low, d.fixed_high)
