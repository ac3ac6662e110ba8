"""Synthetic bandit logs whose true policy values are known exactly.

Used to check the off-policy estimators (tests and ``bench/bench_ope.py``): contexts are a
finite set of customer segments with known frequencies, so the value of any policy,
``sum_m P(m) sum_a pi(a|m) q(m, a)``, is exact rather than itself estimated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SyntheticWorld:
    """A bandit world over ``M`` segments and ``K`` actions.

    ``segment_probs`` (M,), ``expected_reward`` q(m, a) (M, K), ``logging_probs`` mu(a|m) and
    ``target_probs`` pi(a|m) (M, K), ``model_reward`` a deliberately imperfect reward model
    qhat(m, a) (M, K), and ``noise_sd`` the reward noise around q.
    """

    segment_probs: np.ndarray
    expected_reward: np.ndarray
    logging_probs: np.ndarray
    target_probs: np.ndarray
    model_reward: np.ndarray
    noise_sd: float

    @property
    def true_target_value(self) -> float:
        """Exact per-decision value of the target policy."""
        return float(self.segment_probs @ (self.target_probs * self.expected_reward).sum(axis=1))

    @property
    def true_logging_value(self) -> float:
        """Exact per-decision value of the logging policy."""
        return float(self.segment_probs @ (self.logging_probs * self.expected_reward).sum(axis=1))


def make_world(
    *,
    n_segments: int = 20,
    n_actions: int = 3,
    min_propensity: float = 0.05,
    reward_offset: float = 10.0,
    noise_sd: float = 5.0,
    model_error_sd: float = 1.0,
    seed: int = 0,
) -> SyntheticWorld:
    """Build a world where the logging policy rarely takes the actions the target prefers.

    The logging policy favours one action per segment and gives each other action only
    ``min_propensity``; the target policy is the greedy policy on the true rewards, so most of
    its mass lies on actions logged with small propensities (the hard case for IPS).
    ``reward_offset`` shifts every reward (margins are rarely centred on zero), which is what
    self-normalisation and a reward model absorb and plain IPS does not.
    """
    if not 0 < min_propensity * (n_actions - 1) < 1:
        raise ValueError("min_propensity * (n_actions - 1) must be in (0, 1)")
    rng = np.random.default_rng(seed)
    segment_probs = rng.dirichlet(np.full(n_segments, 5.0))
    expected_reward = reward_offset + rng.normal(0.0, 3.0, size=(n_segments, n_actions))
    best = expected_reward.argmax(axis=1)
    # The logger's favourite is a random action other than the best one where possible.
    favourite = (best + rng.integers(1, n_actions, size=n_segments)) % n_actions
    logging_probs = np.full((n_segments, n_actions), min_propensity)
    logging_probs[np.arange(n_segments), favourite] = 1.0 - min_propensity * (n_actions - 1)
    target_probs = np.zeros((n_segments, n_actions))
    target_probs[np.arange(n_segments), best] = 1.0
    model_reward = expected_reward + rng.normal(0.0, model_error_sd, size=expected_reward.shape)
    return SyntheticWorld(
        segment_probs, expected_reward, logging_probs, target_probs, model_reward, noise_sd
    )


@dataclass(frozen=True)
class SyntheticLog:
    """``reps`` independent logs of ``n`` decisions each; every array is ``(reps, n)`` except
    ``target_action_probs`` and ``reward_predictions``, which are ``(reps, n, K)``."""

    segments: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    logged_propensities: np.ndarray
    target_propensities: np.ndarray
    target_action_probs: np.ndarray
    reward_predictions: np.ndarray


def sample_logs(world: SyntheticWorld, n: int, reps: int = 1, seed: int = 0) -> SyntheticLog:
    """Draw ``reps`` logs of ``n`` decisions taken by the world's logging policy."""
    rng = np.random.default_rng(seed)
    n_segments, n_actions = world.expected_reward.shape
    segments = rng.choice(n_segments, size=(reps, n), p=world.segment_probs)
    # Inverse-CDF sampling of each decision's action from its segment's logging row.
    cdf = world.logging_probs.cumsum(axis=1)[segments]
    u = rng.random(size=(reps, n, 1))
    actions = np.minimum((u > cdf).sum(axis=2), n_actions - 1)
    rewards = world.expected_reward[segments, actions] + rng.normal(
        0.0, world.noise_sd, size=(reps, n)
    )
    return SyntheticLog(
        segments=segments,
        actions=actions,
        rewards=rewards,
        logged_propensities=world.logging_probs[segments, actions],
        target_propensities=world.target_probs[segments, actions],
        target_action_probs=world.target_probs[segments],
        reward_predictions=world.model_reward[segments],
    )
