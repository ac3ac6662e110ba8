"""Off-policy evaluation: the value of a policy estimated from decisions another policy logged.

Every estimator works on arrays over the logged decisions ``i = 1..n``:

- ``rewards[i]``: the observed reward (margin) of decision ``i``;
- ``logged_propensities[i]``: ``mu(a_i | x_i)``, the exact probability with which the logging
  policy chose the logged action ``a_i`` (from ``decide.decision_log.propensity``);
- ``target_propensities[i]``: ``pi(a_i | x_i)``, the probability with which the evaluated
  policy would choose that same action.

With importance weights ``w_i = pi(a_i|x_i) / mu(a_i|x_i)`` (optionally clipped at ``clip``):

- IPS (inverse propensity scoring): ``V = mean(w_i r_i)``; unbiased without clipping, its
  variance grows with ``1 / mu``. Standard error: ``sd(w_i r_i) / sqrt(n)``.
- SNIPS (self-normalised IPS): ``V = sum(w_i r_i) / sum(w_i)``; slightly biased, much lower
  variance when propensities are small. Standard error by the delta method:
  ``sqrt( sum(w_i^2 (r_i - V)^2) ) / sum(w_i)``.
- DR (doubly robust): ``V = mean( qhat_pi(x_i) + w_i (r_i - qhat(x_i, a_i)) )`` where
  ``qhat(x, a)`` is a reward model's prediction and ``qhat_pi(x) = sum_a pi(a|x) qhat(x, a)``
  its expected reward under the target policy. Unbiased if either the propensities or the
  reward model are right. Standard error: ``sd(terms) / sqrt(n)``.

Intervals are normal approximations at level ``1 - alpha`` (95% by default). Clipping trades
bias for variance: with ``clip`` the estimators target the clipped-weight value.

Policies as probability matrices: the helpers below return ``(n, K)`` arrays of
``pi(a | x_i)`` over the action catalogue, and :func:`logged_action_probabilities` picks the
column of each logged action, which is what ``target_propensities`` expects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np
import pandas as pd

METHODS = ("ips", "snips", "dr")

# Propensities are logged as exact probabilities, but summing floats can overshoot 1 by a few
# ulps; anything beyond this tolerance is a genuinely broken log.
_PROBABILITY_TOLERANCE = 1e-9
_MAX_POSITIONS_SHOWN = 10


@dataclass(frozen=True)
class PolicyValueEstimate:
    """An estimated policy value with its interval.

    ``value``, ``ci_low``, ``ci_high`` are in reward units per decision; ``std_error`` is the
    estimator's standard error; ``effective_sample_size`` is ``(sum w)^2 / sum w^2``, how many
    on-policy decisions the weighted log is worth; ``n_clipped`` counts weights cut at ``clip``.
    """

    value: float
    ci_low: float
    ci_high: float
    method: str
    n: int
    effective_sample_size: float
    std_error: float
    alpha: float
    clip: float | None
    max_weight: float
    n_clipped: int

    def as_dict(self) -> dict[str, float | int | str | None]:
        """The estimate as a plain dict (for tables and metadata)."""
        return asdict(self)


def _positions(mask: np.ndarray) -> str:
    idx = np.flatnonzero(mask)
    shown = ", ".join(str(i) for i in idx[:_MAX_POSITIONS_SHOWN])
    more = (
        f", ... ({len(idx) - _MAX_POSITIONS_SHOWN} more)" if len(idx) > _MAX_POSITIONS_SHOWN else ""
    )
    return f"[{shown}{more}]"


def _as_vector(name: str, values: object, n: int | None = None) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one value per logged decision)")
    if n is not None and len(arr) != n:
        raise ValueError(f"{name} has {len(arr)} values but there are {n} logged decisions")
    return arr


def validate_probabilities(name: str, values: np.ndarray, *, allow_zero: bool) -> None:
    """Raise ``ValueError`` if any of ``values`` is NaN, negative, above 1 or (unless
    ``allow_zero``) exactly 0; the message says how many and at which positions."""
    bad = np.isnan(values) | (values > 1.0 + _PROBABILITY_TOLERANCE)
    bad |= values < 0.0 if allow_zero else values <= 0.0
    if bad.any():
        allowed = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(
            f"{name}: {int(bad.sum())} of {len(values)} values are outside {allowed} "
            f"(NaN, {'negative' if allow_zero else '0 or negative'}, or above 1) at positions "
            f"{_positions(bad)}; a propensity must be the exact probability the action had"
        )


def importance_weights(
    logged_propensities: np.ndarray, target_propensities: np.ndarray, clip: float | None
) -> tuple[np.ndarray, int]:
    """Return ``(w, n_clipped)`` with ``w = min(target / logged, clip)``."""
    weights = target_propensities / logged_propensities
    if clip is None:
        return weights, 0
    if not clip > 0:
        raise ValueError(f"clip must be a positive weight cap, got {clip!r}")
    n_clipped = int((weights > clip).sum())
    return np.minimum(weights, clip), n_clipped


def _dr_terms(
    n: int,
    reward_predictions: object,
    target_action_probs: object | None,
    logged_actions: object | None,
    target_reward_predictions: object | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(qhat(x_i, a_i), qhat_pi(x_i))`` from either argument form of the DR call."""
    predictions = np.asarray(reward_predictions, dtype=float)
    if predictions.ndim == 2:
        if predictions.shape[0] != n:
            raise ValueError(
                f"reward_predictions has {predictions.shape[0]} rows but there are {n} decisions"
            )
        if target_action_probs is None or logged_actions is None:
            raise ValueError(
                "with a (n, K) reward_predictions matrix, dr also needs target_action_probs "
                "(n, K) and logged_actions (the column index of each logged action)"
            )
        probs = np.asarray(target_action_probs, dtype=float)
        if probs.shape != predictions.shape:
            raise ValueError(
                f"target_action_probs has shape {probs.shape}, reward_predictions {predictions.shape}"
            )
        validate_probabilities("target_action_probs", probs.ravel(), allow_zero=True)
        actions = np.asarray(logged_actions)
        if actions.shape != (n,) or not np.issubdtype(actions.dtype, np.integer):
            raise ValueError("logged_actions must be n integer column indices")
        if (actions < 0).any() or (actions >= predictions.shape[1]).any():
            raise ValueError("logged_actions has column indices outside the action catalogue")
        logged_prediction = predictions[np.arange(n), actions]
        target_prediction = (probs * predictions).sum(axis=1)
    elif predictions.ndim == 1:
        if target_reward_predictions is None:
            raise ValueError(
                "with a one-dimensional reward_predictions (the predicted reward of each logged "
                "action), dr also needs target_reward_predictions (the model's expected reward "
                "under the target policy, per decision)"
            )
        logged_prediction = _as_vector("reward_predictions", predictions, n)
        target_prediction = _as_vector("target_reward_predictions", target_reward_predictions, n)
    else:
        raise ValueError("reward_predictions must be a vector (n,) or a matrix (n, K)")
    for name, arr in (
        ("predicted reward of the logged action", logged_prediction),
        ("expected reward under the target policy", target_prediction),
    ):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or infinite predictions")
    return logged_prediction, target_prediction


def estimate_policy_value(
    rewards: Sequence[float] | np.ndarray,
    logged_propensities: Sequence[float] | np.ndarray,
    target_propensities: Sequence[float] | np.ndarray,
    method: str = "snips",
    *,
    reward_predictions: np.ndarray | None = None,
    target_action_probs: np.ndarray | None = None,
    logged_actions: Sequence[int] | np.ndarray | None = None,
    target_reward_predictions: Sequence[float] | np.ndarray | None = None,
    clip: float | None = None,
    alpha: float = 0.05,
) -> PolicyValueEstimate:
    """Estimate the per-decision value of a target policy from a logged policy's decisions.

    Inputs are arrays over the ``n`` logged decisions: ``rewards``, ``logged_propensities``
    (each in (0, 1]) and ``target_propensities`` (each in [0, 1]). ``method`` is ``ips``,
    ``snips`` or ``dr``; ``clip`` caps the importance weights; ``alpha`` sets the interval level.

    ``dr`` takes the reward model's predictions in one of two forms:

    - ``reward_predictions`` an ``(n, K)`` matrix of predicted reward for every action,
      ``target_action_probs`` the ``(n, K)`` target policy, and ``logged_actions`` the column
      of each logged action; or
    - ``reward_predictions`` an ``(n,)`` vector, the predicted reward of the logged action, and
      ``target_reward_predictions`` an ``(n,)`` vector, ``sum_a pi(a|x_i) qhat(x_i, a)``.

    Returns a :class:`PolicyValueEstimate`. Raises ``ValueError`` on an unknown method, an
    empty log, mismatched lengths, NaN rewards, or logged propensities that are 0, NaN or above
    1 (the message says how many and where).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    r = _as_vector("rewards", rewards)
    n = len(r)
    if n == 0:
        raise ValueError("cannot evaluate a policy on an empty log")
    if not np.isfinite(r).all():
        bad = ~np.isfinite(r)
        raise ValueError(
            f"rewards: {int(bad.sum())} of {n} values are NaN or infinite at positions "
            f"{_positions(bad)}"
        )
    mu = _as_vector("logged_propensities", logged_propensities, n)
    pi = _as_vector("target_propensities", target_propensities, n)
    validate_probabilities("logged_propensities", mu, allow_zero=False)
    validate_probabilities("target_propensities", pi, allow_zero=True)
    w, n_clipped = importance_weights(mu, pi, clip)

    z = NormalDist().inv_cdf(1 - alpha / 2)
    if method == "ips":
        terms = w * r
        value = float(terms.mean())
        std_error = float(terms.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
    elif method == "snips":
        total_weight = w.sum()
        if total_weight <= 0:
            # No logged decision is one the target policy could take: nothing to normalise by.
            raise ValueError(
                "snips: the target policy gives probability 0 to every logged action, so the "
                "log says nothing about it"
            )
        value = float((w * r).sum() / total_weight)
        std_error = float(np.sqrt((w**2 * (r - value) ** 2).sum()) / total_weight)
        if n > 1:
            # Small-sample correction matching the ddof=1 of the other estimators.
            std_error *= np.sqrt(n / (n - 1))
    else:
        logged_prediction, target_prediction = _dr_terms(
            n, reward_predictions, target_action_probs, logged_actions, target_reward_predictions
        )
        terms = target_prediction + w * (r - logged_prediction)
        value = float(terms.mean())
        std_error = float(terms.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")

    sum_sq = float((w**2).sum())
    ess = float(w.sum() ** 2 / sum_sq) if sum_sq > 0 else 0.0
    return PolicyValueEstimate(
        value=value,
        ci_low=value - z * std_error,
        ci_high=value + z * std_error,
        method=method,
        n=n,
        effective_sample_size=ess,
        std_error=std_error,
        alpha=alpha,
        clip=clip,
        max_weight=float(w.max()),
        n_clipped=n_clipped,
    )


# --- policies as (n, K) probability matrices ------------------------------------------------


def action_indices(logged_actions: Sequence[str], actions: Sequence[str]) -> np.ndarray:
    """Map action names to their column index in ``actions``; unknown names raise ValueError."""
    index = {name: i for i, name in enumerate(actions)}
    unknown = sorted({a for a in logged_actions if a not in index})
    if unknown:
        raise ValueError(f"actions {unknown} are not in the catalogue {list(actions)}")
    return np.fromiter(
        (index[a] for a in logged_actions), dtype=np.int64, count=len(logged_actions)
    )


def deterministic_policy_probs(chosen_actions: Sequence[str], actions: Sequence[str]) -> np.ndarray:
    """One-hot ``(n, K)`` matrix of a deterministic policy that picks ``chosen_actions[i]``."""
    cols = action_indices(chosen_actions, actions)
    probs = np.zeros((len(cols), len(actions)))
    probs[np.arange(len(cols)), cols] = 1.0
    return probs


def uniform_policy_probs(n: int, actions: Sequence[str]) -> np.ndarray:
    """``(n, K)`` matrix of the uniform random policy over ``actions``."""
    return np.full((n, len(actions)), 1.0 / len(actions))


def static_action_probs(n: int, actions: Sequence[str], action: str) -> np.ndarray:
    """``(n, K)`` matrix of the policy that always takes ``action``."""
    return deterministic_policy_probs([action] * n, actions)


def logged_action_probabilities(policy_probs: np.ndarray, logged_actions: np.ndarray) -> np.ndarray:
    """``pi(a_i | x_i)``: the column of each logged action (indices) in a ``(n, K)`` policy."""
    probs = np.asarray(policy_probs, dtype=float)
    cols = np.asarray(logged_actions)
    return probs[np.arange(len(cols)), cols]


def baseline_policies(n: int, actions: Sequence[str]) -> dict[str, np.ndarray]:
    """The simple alternatives every policy is compared with: uniform and each static action."""
    policies = {"uniform": uniform_policy_probs(n, actions)}
    for action in actions:
        policies[f"always_{action}"] = static_action_probs(n, actions, action)
    return policies


def policy_value_table(
    rewards: Sequence[float] | np.ndarray,
    logged_actions: Sequence[str],
    logged_propensities: Sequence[float] | np.ndarray,
    policies: Mapping[str, np.ndarray],
    actions: Sequence[str],
    *,
    reward_predictions: np.ndarray | None = None,
    methods: Sequence[str] = METHODS,
    clip: float | None = None,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Evaluate several policies on one log.

    ``policies`` maps a policy name to its ``(n, K)`` probability matrix over ``actions``;
    ``reward_predictions`` is the reward model's ``(n, K)`` matrix, needed for ``dr`` (which is
    skipped without it). Returns one row per (policy, method) with the fields of
    :class:`PolicyValueEstimate` and the policy name, plus the on-policy logged mean as the
    row ``policy="logged"``, ``method="on_policy"``.
    """
    cols = action_indices(list(logged_actions), actions)
    r = _as_vector("rewards", rewards)
    rows: list[dict[str, object]] = []
    for name, probs in policies.items():
        target = logged_action_probabilities(probs, cols)
        for method in methods:
            if method == "dr" and reward_predictions is None:
                continue
            est = estimate_policy_value(
                r,
                logged_propensities,
                target,
                method,
                reward_predictions=reward_predictions if method == "dr" else None,
                target_action_probs=probs if method == "dr" else None,
                logged_actions=cols if method == "dr" else None,
                clip=clip,
                alpha=alpha,
            )
            rows.append({"policy": name, **est.as_dict()})
    z = NormalDist().inv_cdf(1 - alpha / 2)
    se = float(r.std(ddof=1) / np.sqrt(len(r))) if len(r) > 1 else float("inf")
    mean = float(r.mean())
    rows.append(
        {
            "policy": "logged",
            "value": mean,
            "ci_low": mean - z * se,
            "ci_high": mean + z * se,
            "method": "on_policy",
            "n": len(r),
            "effective_sample_size": float(len(r)),
            "std_error": se,
            "alpha": alpha,
            "clip": None,
            "max_weight": 1.0,
            "n_clipped": 0,
        }
    )
    return pd.DataFrame(rows)
