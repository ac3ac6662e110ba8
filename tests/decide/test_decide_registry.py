"""Reward-model training and the MLflow registry on a real SQLite tracking store."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from journey_pipeline.decide import registry
from journey_pipeline.decide.bandit import DEFAULT_PESSIMISM
from journey_pipeline.decide.reward_model import (
    TrainingConfig,
    evaluate_policy,
    expected_calibration_error,
    log_loss,
    logged_action_probabilities,
    roc_auc,
    snips_difference,
    snips_estimate,
    train_reward_models,
    validation_folds,
)
from journey_pipeline.decide.synthetic import (
    expected_margins,
    synthetic_contexts,
    synthetic_training_frame,
)
from journey_pipeline.features.contract import MODEL_FEATURES
from journey_pipeline.settings import load_settings


def test_metric_helpers_on_known_values():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))
    assert log_loss([1, 0], [0.5, 0.5]) == pytest.approx(math.log(2))
    assert expected_calibration_error([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.0)
    assert expected_calibration_error([1, 1], [0.05, 0.05]) == pytest.approx(0.95)
    rewards = np.array([1.0, 0.0, 3.0, 2.0])
    same = snips_estimate(rewards, np.full(4, 0.5), np.full(4, 0.5))
    assert same.value == pytest.approx(1.5) and same.ci_low < 1.5 < same.ci_high
    tilted = snips_estimate(rewards, np.full(4, 0.5), np.array([0.1, 0.1, 0.9, 0.1]))
    assert tilted.value == pytest.approx((0.2 * 1 + 1.8 * 3 + 0.2 * 2) / 2.4)


def test_the_paired_ope_difference_covers_the_truth_and_is_narrower_than_two_intervals():
    """Uniform logging over three actions with known mean rewards; A always plays the best
    action, B (like a champion that logged the data) plays uniformly."""
    means = np.array([10.0, 12.0, 11.0])
    truth = means[1] - means.mean()
    covered, paired_widths, unpaired_gaps = 0, [], []
    for rep in range(200):
        rng = np.random.default_rng(rep)
        actions = rng.integers(0, 3, 2_000)
        rewards = np.where(rng.random(2_000) < 0.15, rng.gamma(2.0, means[actions] / 0.3), 0.0)
        logged = np.full(2_000, 1 / 3)
        target_a = (actions == 1).astype(float)
        target_b = np.full(2_000, 1 / 3)
        diff = snips_difference(rewards, logged, target_a, target_b)
        covered += diff.ci_low <= truth <= diff.ci_high
        paired_widths.append(diff.ci_high - diff.ci_low)
        a, b = snips_estimate(rewards, logged, target_a), snips_estimate(rewards, logged, target_b)
        unpaired_gaps.append((a.ci_high - a.ci_low) + (b.ci_high - b.ci_low))
    assert covered >= 180, covered  # nominal 95%: at least 90% of 200 repetitions
    assert np.mean(paired_widths) < 0.9 * np.mean(unpaired_gaps)
    same = snips_difference(
        np.array([1.0, 0.0, 3.0]), np.full(3, 0.5), np.full(3, 0.5), np.full(3, 0.5)
    )
    assert (same.value, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)


@pytest.fixture(scope="module")
def results():
    """A good training and a worse one (outcomes shuffled, so the features carry no signal)."""
    frame = synthetic_training_frame(5_000, seed=21)
    good = train_reward_models(frame)
    shuffled = frame.copy()
    order = np.random.default_rng(0).permutation(len(frame))
    shuffled["reward"] = frame["reward"].to_numpy()[order]
    shuffled["converted"] = frame["converted"].to_numpy()[order]
    worse = train_reward_models(shuffled, champion=good.bandit)
    return good, worse


def test_training_metrics_cross_fitted_on_every_decision(results):
    good, worse = results
    window = good.data_window
    assert window["validation"] == "cross-fitted over 5 consecutive time blocks"
    assert window["n_valid"] == window["n_rows"] == 5_000
    assert window["n_train"] == 4_000  # each fold's models learn from the other four blocks
    assert good.metrics["auc"] > 0.6 and good.metrics["ece"] < 0.1
    assert good.metrics["ope_ci_low"] <= good.metrics["ope_value"] <= good.metrics["ope_ci_high"]
    # A policy that learnt the effects is worth more than the uniform logging policy.
    assert good.metrics["ope_value"] > good.metrics["logged_policy_value"]
    assert worse.metrics["auc"] < good.metrics["auc"] - 0.05
    assert "champion_ope_value" in worse.metrics
    assert (
        worse.metrics["ope_uplift_ci_low"]
        <= worse.metrics["ope_uplift_vs_champion"]
        <= worse.metrics["ope_uplift_ci_high"]
    )
    assert set(good.per_action_metrics.index) == {"no_offer", "offer_a", "offer_b"}
    card = good.model_card()
    for section in ("Data window", "Features", "Metrics", "Intended use", "Known limits"):
        assert f"## {section}" in card
    with pytest.raises(ValueError, match="validation rows"):
        train_reward_models(synthetic_training_frame(60, seed=1), TrainingConfig())


def test_training_days_keeps_only_the_latest_decisions():
    frame = synthetic_training_frame(3_000, seed=5)
    decided = pd.to_datetime(frame["decided_at"])
    span_days = (decided.max() - decided.min()) / pd.Timedelta(days=1)
    assert span_days > 20
    result = train_reward_models(
        frame, TrainingConfig(validation_days=3.0, training_days=14.0, num_boost_round=20)
    )
    window = result.data_window
    kept = decided >= decided.max() - pd.Timedelta(days=14)
    assert window["n_rows"] == window["n_valid"] == int(kept.sum())
    assert pd.Timestamp(window["train_start"]) >= decided.max() - pd.Timedelta(days=14)
    assert result.params()["training_days"] == 14.0


def _drifted_log(n: int, seed: int, onset: str) -> tuple[pd.DataFrame, pd.Timestamp, np.ndarray]:
    """A uniform-logged frame whose two offers trade effects from ``onset`` on (what offer_b
    did, offer_a now does); out: the frame, the onset and the mask of rows since it."""
    frame = synthetic_training_frame(n, seed=seed)
    start = pd.Timestamp(onset)
    after = (frame["decided_at"] >= start).to_numpy()
    swapped = frame["action"].map({"offer_a": "offer_b", "offer_b": "offer_a"})
    frame.loc[after, "action"] = swapped[after].fillna(frame.loc[after, "action"])
    return frame, start, after


def test_after_a_drift_only_the_new_regime_trains_once_it_has_enough_decisions():
    frame, onset, after = _drifted_log(8_000, seed=6, onset="2026-01-15")
    config = TrainingConfig(validation_days=3.0, num_boost_round=20)
    mixed = train_reward_models(frame, config)
    regime = train_reward_models(frame, replace(config, regime_start=onset.to_pydatetime()))
    window = regime.data_window
    assert window["n_rows"] == window["n_valid"] == int(after.sum())
    assert pd.Timestamp(window["train_start"]) >= onset
    assert window["validation"] == "cross-fitted over 5 consecutive time blocks"
    assert f"drift since 2026-01-15: {int(after.sum())} decisions since" in window["regime"]
    assert regime.params()["regime_start"] == "2026-01-15 00:00:00"
    # Too few decisions since the onset: the whole window trains, and the run says why.
    thin = train_reward_models(
        frame, replace(config, regime_start=onset.to_pydatetime(), min_regime_rows=10_000)
    )
    assert thin.data_window["n_rows"] == len(frame)
    assert "fewer than 10000, so the whole window" in thin.data_window["regime"]
    # The gate does not promote a model that could not learn the new regime.
    assert (regime.metrics["regime_only"], thin.metrics["regime_only"]) == (1.0, 0.0)
    assert "regime_only" not in mixed.metrics
    assert registry.gate(regime.metrics).passed
    refused = registry.gate(thin.metrics)
    assert refused.reasons == [
        "learnt from the regime since the drift: challenger 0.0000, needs 1.0000"
    ]

    # Judged on the new regime's truth, the policy trained on it alone earns more.
    fresh = synthetic_contexts(20_000, seed=99)
    truth = expected_margins(fresh).rename(columns={"offer_a": "offer_b", "offer_b": "offer_a"})

    def margin(result) -> float:
        chosen = result.bandit.decide(fresh[MODEL_FEATURES])["action"].to_numpy()
        return float(
            truth.to_numpy()[np.arange(len(fresh)), truth.columns.get_indexer(chosen)].mean()
        )

    uniform = float(truth.mean(axis=1).mean())
    assert margin(regime) > margin(mixed) + 0.2 * (truth.max(axis=1).mean() - uniform)


def test_cross_fitting_judges_every_decision_once_by_models_that_did_not_see_it():
    frame = synthetic_training_frame(1_000, seed=4)
    folds, days, scheme = validation_folds(frame, 3.0, crossfit_folds=5)
    assert len(folds) == 5 and scheme == "cross-fitted over 5 consecutive time blocks"
    judged = pd.concat([valid for _, valid in folds])
    assert sorted(judged["decision_id"]) == sorted(frame["decision_id"])
    for train, valid in folds:
        assert not set(train["decision_id"]) & set(valid["decision_id"])
        assert len(train) + len(valid) == len(frame)
    # Consecutive blocks of time, in order.
    ends = [(v["decided_at"].min(), v["decided_at"].max()) for _, v in folds]
    assert all(a[1] <= b[0] for a, b in zip(ends, ends[1:], strict=False))
    assert days == pytest.approx(28.0, abs=0.5)
    [(train, valid)] = validation_folds(frame, 3.0)[0]
    assert train["decided_at"].max() < valid["decided_at"].min()
    with pytest.raises(ValueError, match="need at least 50"):
        validation_folds(frame.head(200), 3.0, crossfit_folds=5)


def test_on_a_short_regime_cross_fitting_gives_the_gate_a_tighter_paired_uplift():
    frame, onset, after = _drifted_log(6_000, seed=0, onset="2026-01-22")
    config = TrainingConfig(validation_days=3.0, num_boost_round=20)
    # The champion learnt the old regime; a week of the new one (about 1,400 decisions) follows.
    champion = train_reward_models(frame[~after].reset_index(drop=True), config).bandit
    config = replace(config, regime_start=onset.to_pydatetime())
    crossfit = train_reward_models(frame, config, champion=champion).metrics
    split = train_reward_models(frame, replace(config, crossfit_folds=0), champion=champion).metrics
    assert crossfit["n_valid"] == int(after.sum()) > 2 * split["n_valid"]

    def width(metrics) -> float:
        return metrics["ope_uplift_ci_high"] - metrics["ope_uplift_ci_low"]

    assert width(crossfit) < 0.85 * width(split)
    # The policy of the new regime beats the old champion, with confidence.
    assert crossfit["ope_uplift_ci_low"] > 0.0


def test_the_champion_is_compared_on_the_decisions_it_did_not_learn_from():
    frame = synthetic_training_frame(6_000, seed=9)
    config = TrainingConfig(num_boost_round=20)
    first = frame[frame["decided_at"] < pd.Timestamp("2026-01-15")].reset_index(drop=True)
    champion = train_reward_models(first, config)
    until = first["decided_at"].max()
    later = frame[frame["decided_at"] > until]

    def value(rows) -> float:
        probabilities = logged_action_probabilities(champion.bandit, rows, MODEL_FEATURES)
        return evaluate_policy(rows, probabilities).value

    # Valued on its own training decisions the champion looks far better than on new ones.
    assert value(first) > value(later) + 2.0
    fair = train_reward_models(
        frame, config, champion=champion.bandit, champion_trained_until=until
    )
    blind = train_reward_models(frame, config, champion=champion.bandit)
    assert fair.metrics["champion_comparison_rows"] == len(later)
    assert blind.metrics["champion_comparison_rows"] == len(frame)
    assert fair.metrics["champion_ope_value"] == pytest.approx(value(later))
    # The challenger learnt from twice the data: better on fair terms, worse on the blind ones.
    assert blind.metrics["ope_uplift_vs_champion"] < 0 < fair.metrics["ope_uplift_vs_champion"]
    # A champion that learnt from every decision: no fair comparison yet, and the gate says so.
    newest = frame["decided_at"].max()
    none = train_reward_models(
        frame, config, champion=champion.bandit, champion_trained_until=newest
    )
    assert none.metrics["champion_comparison_rows"] == 0
    assert "ope_uplift_vs_champion" not in none.metrics
    verdict = registry.gate(none.metrics, champion.metrics)
    assert verdict.reasons == [
        "decisions the champion did not learn from: challenger 0.0000, needs 50"
    ]


def test_a_history_shorter_than_the_validation_window_validates_on_its_latest_half():
    frame = synthetic_training_frame(1_500, seed=3)
    start = pd.Timestamp("2026-01-01")
    # Squeeze four weeks of decisions into four days, as after a 7-day cold start.
    frame["decided_at"] = start + (frame["decided_at"] - start) / 7
    result = train_reward_models(
        frame, TrainingConfig(crossfit_folds=0, validation_days=7.0, num_boost_round=20)
    )
    window = result.data_window
    assert window["validation_days"] == pytest.approx(2.0, abs=0.01)
    assert window["train_end"] < window["valid_start"]
    assert min(window["n_train"], window["n_valid"]) > 0.3 * len(frame)
    assert "the latest 2 days validate" in result.model_card()


def test_gate_rules(results):
    good, worse = results
    first = registry.gate(good.metrics)
    assert first.passed, first.reasons
    assert any(row["check"] == "auc above chance" for row in first.table)
    blocked = registry.gate(worse.metrics, good.metrics)
    assert not blocked.passed
    assert any("auc" in reason for reason in blocked.reasons)
    assert "| auc vs champion |" in blocked.markdown()
    broken = {**good.metrics, "auc": float("nan")}
    assert not registry.gate(broken).passed


def test_gate_compares_auc_and_log_loss_only_on_the_same_window(results, monkeypatch):
    good, _ = results
    champion = dict(good.metrics)
    # A retrain on newer days: the same model quality, but a window with more conversions
    # gives a higher log loss; its OPE lower bound matches the champion's on that window.
    challenger = {
        **good.metrics,
        "log_loss": good.metrics["log_loss"] + 0.05,
        "champion_ope_ci_low": good.metrics["ope_ci_low"],
    }
    windows = {"challenger": ("2026-01-10", "2026-01-12"), "champion": ("2026-01-09", "2026-01-11")}
    monkeypatch.setattr(
        registry, "_validation_window", lambda candidate, settings: windows.get(candidate)
    )
    monkeypatch.setattr(
        registry,
        "_metrics_of",
        lambda candidate, settings: {"challenger": challenger, "champion": champion}.get(candidate),
    )
    verdict = registry.gate("challenger", "champion")
    assert verdict.passed, verdict.reasons
    assert "| log loss vs champion (other window: information only) |" in verdict.markdown()
    # The OPE comparison still blocks a challenger that is worth less on its own window.
    challenger["champion_ope_ci_low"] = good.metrics["ope_ci_low"] + 1.0
    assert "ope lower bound vs champion" in registry.gate("challenger", "champion").reasons[0]
    # Measured on the same window, the log-loss regression blocks.
    windows["champion"] = windows["challenger"]
    challenger["champion_ope_ci_low"] = good.metrics["ope_ci_low"]
    blocked = registry.gate("challenger", "champion")
    assert not blocked.passed and blocked.reasons[0].startswith("log loss vs champion:")


def test_gate_judges_the_champion_by_the_paired_uplift_when_measured(results):
    good, _ = results
    champion = dict(good.metrics)
    # The champion logged the validation decisions, so its own interval is the narrowest and
    # its lower bound the highest; the paired uplift says the challenger is better.
    challenger = {
        **good.metrics,
        "ope_ci_low": good.metrics["ope_ci_low"] - 2.0,
        "champion_ope_value": 10.0,
        "champion_ope_ci_low": good.metrics["ope_ci_low"],
        "ope_uplift_vs_champion": 1.5,
        "ope_uplift_ci_low": -0.5,
        "ope_uplift_ci_high": 3.5,
    }
    verdict = registry.gate(challenger, champion)
    assert verdict.passed, verdict.reasons
    assert "| ope uplift vs champion (paired) |" in verdict.markdown()
    assert "ope lower bound vs champion" not in verdict.markdown()
    # Worse by its estimate, or possibly much worse: refused.
    worse = registry.gate({**challenger, "ope_uplift_vs_champion": -0.2}, champion)
    assert worse.reasons == ["ope uplift vs champion (paired): challenger -0.2000, needs 0.0000"], (
        worse.reasons
    )
    risky = registry.gate({**challenger, "ope_uplift_ci_low": -1.5}, champion)
    assert not risky.passed and risky.reasons[0].startswith("ope uplift lower bound:")


# Three registered versions on a fresh SQLite store (schema migrations included): ~25 s.
@pytest.mark.slow
def test_mlflow_run_aliases_promotion_and_rollback(results, journey_home):
    good, worse = results
    settings = load_settings()
    first = registry.log_training_run(good, settings, run_name="first")
    client = MlflowClient(tracking_uri=settings.mlflow_uri)
    run = client.get_run(first.run_id)
    assert run.data.metrics["auc"] == pytest.approx(good.metrics["auc"])
    assert "auc_offer_a" in run.data.metrics and run.data.params["validation_days"] == "7.0"
    artifacts = {a.path for a in client.list_artifacts(first.run_id)}
    assert {"feature_importance.png", "calibration.png", "model_card.md"} <= artifacts
    assert settings.mlflow_artifacts_dir.exists()
    model_version = client.get_model_version(registry.MODEL_NAME, first.version)
    assert "challenger" in model_version.aliases
    # No champion yet: cold start for callers, then the first version passes the sanity gate.
    assert registry.load_policy_model("champion", settings) == (None, None)
    assert registry.gate(first.version, settings=settings).passed
    registry.promote(first.version, who="ci", why="first version passed sanity checks")

    bandit, version = registry.load_policy_model("champion", settings)
    assert version == first.version and bandit.n_observations == good.bandit.n_observations
    again, _ = registry.load_policy_model("champion", settings)
    assert again is bandit  # cached by version
    contexts = worse.input_example
    pd.testing.assert_frame_equal(
        bandit.decide(contexts, draw_keys=range(len(contexts))),
        good.bandit.decide(contexts, draw_keys=range(len(contexts))),
    )

    second = registry.log_training_run(worse, settings, run_name="worse")
    aliases = client.get_registered_model(registry.MODEL_NAME).aliases
    assert str(aliases["challenger"]) == second.version
    verdict = registry.gate(second.version, first.version, settings=settings)
    assert not verdict.passed  # the worse challenger is blocked
    third = registry.log_training_run(good, settings, run_name="retrain")
    registry.promote(third.version, who="ci", why="gate passed")
    assert registry.load_policy_model("champion", settings)[1] == third.version

    change = registry.rollback(who="oncall", why="conversion dropped after release")
    assert (change.version, change.previous) == (first.version, third.version)
    assert registry.load_policy_model("champion", settings)[1] == first.version
    history = registry.champion_history(settings)
    assert [h["action"] for h in history] == ["promote", "promote", "rollback"]
    assert history[-1]["who"] == "oncall"
    tags = client.get_model_version(registry.MODEL_NAME, first.version).tags
    assert tags["restored_by"] == "oncall"
    with pytest.raises(ValueError, match="no previous champion"):
        registry.rollback(who="oncall", why="again")


def test_the_retrain_passes_its_pessimism_to_the_policy_and_logs_it():
    frame = synthetic_training_frame(3_000, seed=8)
    default = TrainingConfig(validation_days=3.0, num_boost_round=20)
    assert default.as_params()["bandit_pessimism"] == DEFAULT_PESSIMISM > 0
    plain = replace(default, bandit_options={**default.bandit_options, "pessimism": 0.0})
    assert plain.as_params()["bandit_pessimism"] == 0.0
    assert train_reward_models(frame, default).bandit.pessimism == DEFAULT_PESSIMISM
    assert train_reward_models(frame, plain).bandit.pessimism == 0.0
