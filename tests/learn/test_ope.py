"""Off-policy estimators on synthetic logs whose true policy value is known exactly."""

from __future__ import annotations

import numpy as np
import pytest

from journey_pipeline.learn.ope import (
    action_indices,
    baseline_policies,
    deterministic_policy_probs,
    estimate_policy_value,
    logged_action_probabilities,
    policy_value_table,
    static_action_probs,
    uniform_policy_probs,
)
from journey_pipeline.learn.synthetic import make_world, sample_logs

REPS = 200


def run_all(log, i, method, **kwargs):
    return estimate_policy_value(
        log.rewards[i],
        log.logged_propensities[i],
        log.target_propensities[i],
        method,
        reward_predictions=log.reward_predictions[i] if method == "dr" else None,
        target_action_probs=log.target_action_probs[i] if method == "dr" else None,
        logged_actions=log.actions[i] if method == "dr" else None,
        **kwargs,
    )


@pytest.fixture(scope="module")
def small_propensity_logs():
    world = make_world(min_propensity=0.05, seed=1)
    return world, sample_logs(world, n=2000, reps=REPS, seed=2)


@pytest.mark.parametrize("method", ["ips", "snips", "dr"])
def test_intervals_cover_the_true_value(small_propensity_logs, method):
    world, log = small_propensity_logs
    truth = world.true_target_value
    estimates = [run_all(log, i, method) for i in range(REPS)]
    covered = np.mean([e.ci_low <= truth <= e.ci_high for e in estimates])
    assert covered >= 0.90, f"{method}: 95% intervals covered the truth in {covered:.1%}"
    # Coverage is not bought with useless width: the half-width is smaller than the gap
    # between the target's value and the logging policy's (what a naive mean would report).
    gap = abs(world.true_logging_value - truth)
    assert gap > 2
    assert np.mean([(e.ci_high - e.ci_low) / 2 for e in estimates]) < gap


def test_snips_and_dr_beat_ips_when_logging_propensities_are_small(small_propensity_logs):
    world, log = small_propensity_logs
    truth = world.true_target_value
    rmse = {
        method: np.sqrt(
            np.mean([(run_all(log, i, method).value - truth) ** 2 for i in range(REPS)])
        )
        for method in ("ips", "snips", "dr")
    }
    assert rmse["snips"] < rmse["ips"]
    assert rmse["dr"] < rmse["ips"]


def test_dr_vector_form_matches_matrix_form(small_propensity_logs):
    _, log = small_propensity_logs
    matrix = run_all(log, 0, "dr")
    probs, preds = log.target_action_probs[0], log.reward_predictions[0]
    vector = estimate_policy_value(
        log.rewards[0],
        log.logged_propensities[0],
        log.target_propensities[0],
        "dr",
        reward_predictions=preds[np.arange(len(preds)), log.actions[0]],
        target_reward_predictions=(probs * preds).sum(axis=1),
    )
    assert vector.value == pytest.approx(matrix.value)
    assert vector.ci_high == pytest.approx(matrix.ci_high)


def test_on_policy_evaluation_reduces_to_the_logged_mean():
    rewards = np.array([1.0, 0.0, 3.0, 2.0])
    logged = np.array([0.5, 0.25, 0.5, 1.0])
    for method in ("ips", "snips"):
        est = estimate_policy_value(rewards, logged, logged, method)
        assert est.value == pytest.approx(rewards.mean())
        assert est.effective_sample_size == pytest.approx(4.0)


def test_clipping_caps_weights_and_counts_them():
    rewards = np.array([10.0, 1.0, 1.0, 1.0])
    logged = np.array([0.01, 0.5, 0.5, 0.5])
    target = np.array([1.0, 0.5, 0.5, 0.5])
    raw = estimate_policy_value(rewards, logged, target, "ips")
    clipped = estimate_policy_value(rewards, logged, target, "ips", clip=10.0)
    assert raw.max_weight == pytest.approx(100.0) and raw.n_clipped == 0
    assert clipped.max_weight == pytest.approx(10.0) and clipped.n_clipped == 1
    assert clipped.value == pytest.approx((10 * 10 + 3) / 4)
    with pytest.raises(ValueError, match="clip"):
        estimate_policy_value(rewards, logged, target, "ips", clip=0)


def test_snips_interval_uses_the_delta_method():
    rng = np.random.default_rng(0)
    rewards = rng.normal(5, 1, 500)
    logged = rng.uniform(0.2, 1.0, 500)
    target = rng.uniform(0.0, 1.0, 500)
    est = estimate_policy_value(rewards, logged, target, "snips")
    w = target / logged
    value = (w * rewards).sum() / w.sum()
    se = np.sqrt((w**2 * (rewards - value) ** 2).sum()) / w.sum() * np.sqrt(500 / 499)
    assert est.value == pytest.approx(value)
    assert est.std_error == pytest.approx(se)
    assert est.ci_high - est.value == pytest.approx(1.959964 * se, rel=1e-5)


@pytest.mark.parametrize(
    ("logged", "where"),
    [
        ([0.5, 0.0, 0.2, 0.0], "[1, 3]"),
        ([0.5, 1.2, 0.2, 0.3], "[1]"),
        ([np.nan, 0.5, 0.2, 0.3], "[0]"),
        ([0.5, 0.5, -0.1, 0.3], "[2]"),
    ],
)
def test_bad_logged_propensities_are_rejected_with_count_and_positions(logged, where):
    count = sum(1 for p in logged if not (0 < p <= 1))
    with pytest.raises(ValueError) as err:
        estimate_policy_value([1.0, 1.0, 1.0, 1.0], logged, [0.5] * 4)
    message = str(err.value)
    assert f"logged_propensities: {count} of 4" in message
    assert where in message


def test_other_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="target_propensities: 1 of 2"):
        estimate_policy_value([1, 1], [0.5, 0.5], [0.5, 1.5])
    with pytest.raises(ValueError, match="unknown method"):
        estimate_policy_value([1], [0.5], [0.5], "direct")
    with pytest.raises(ValueError, match="3 values but there are 2"):
        estimate_policy_value([1, 1], [0.5, 0.5, 0.5], [0.5, 0.5])
    with pytest.raises(ValueError, match="empty log"):
        estimate_policy_value([], [], [])
    with pytest.raises(ValueError, match="rewards: 1 of 2"):
        estimate_policy_value([1, np.nan], [0.5, 0.5], [0.5, 0.5])
    with pytest.raises(ValueError, match="target_reward_predictions"):
        estimate_policy_value([1, 1], [0.5, 0.5], [0.5, 0.5], "dr", reward_predictions=[1, 1])
    with pytest.raises(ValueError, match="probability 0 to every logged action"):
        estimate_policy_value([1, 1], [0.5, 0.5], [0.0, 0.0], "snips")


def test_policy_helpers_and_value_table():
    actions = ["no_offer", "offer_a", "offer_b"]
    logged_actions = ["offer_a", "no_offer", "offer_b", "offer_a"]
    cols = action_indices(logged_actions, actions)
    assert cols.tolist() == [1, 0, 2, 1]
    one_hot = deterministic_policy_probs(["offer_a", "offer_a", "no_offer", "offer_b"], actions)
    assert logged_action_probabilities(one_hot, cols).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert uniform_policy_probs(2, actions).sum(axis=1).tolist() == [1.0, 1.0]
    assert static_action_probs(2, actions, "offer_b")[:, 2].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="not in the catalogue"):
        action_indices(["offer_z"], actions)

    rewards = np.array([4.0, 1.0, 2.0, 6.0])
    propensities = np.array([0.5, 0.25, 0.25, 0.5])
    table = policy_value_table(
        rewards,
        logged_actions,
        propensities,
        baseline_policies(4, actions),
        actions,
        reward_predictions=np.zeros((4, 3)),
    )
    always_a = table[(table["policy"] == "always_offer_a") & (table["method"] == "snips")]
    assert always_a["value"].item() == pytest.approx(5.0)  # the mean of offer_a's rewards
    ips_a = table[(table["policy"] == "always_offer_a") & (table["method"] == "ips")]
    assert ips_a["value"].item() == pytest.approx((4 / 0.5 + 6 / 0.5) / 4)
    logged_row = table[table["policy"] == "logged"]
    assert logged_row["value"].item() == pytest.approx(rewards.mean())
    assert set(table["method"]) == {"ips", "snips", "dr", "on_policy"}
