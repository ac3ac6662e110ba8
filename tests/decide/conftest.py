"""Fixtures of the decide tests: a JOURNEY_HOME per test, realistic contexts, a trained bandit."""

from __future__ import annotations

import pandas as pd
import pytest

from journey_pipeline.actions import ACTION_NAMES
from journey_pipeline.decide.bandit import ContextualBandit
from journey_pipeline.decide.synthetic import synthetic_training_frame
from journey_pipeline.features.contract import MODEL_FEATURES


@pytest.fixture(autouse=True)
def journey_home(tmp_path, monkeypatch):
    """Every test gets its own JOURNEY_HOME, so no test sees another's files."""
    home = tmp_path / "journey_home"
    monkeypatch.setenv("JOURNEY_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def training_frame() -> pd.DataFrame:
    """6,000 decisions logged by the uniform policy in the synthetic world."""
    return synthetic_training_frame(6000, seed=0)


@pytest.fixture(scope="session")
def trained_bandit(training_frame) -> ContextualBandit:
    """A bandit trained on the synthetic training frame (read-only in tests: copy to mutate)."""
    bandit = ContextualBandit(ACTION_NAMES, seed=0, feature_names=MODEL_FEATURES)
    bandit.update(
        training_frame[MODEL_FEATURES],
        training_frame["action"],
        training_frame["propensity"],
        training_frame["reward"],
    )
    assert not bandit.is_cold
    return bandit


@pytest.fixture(scope="session")
def regression_bandit(training_frame) -> ContextualBandit:
    """The same data with the margins regressed (pooled baseline and per-action corrections)
    instead of the two-part model (read-only in tests: copy to mutate)."""
    bandit = ContextualBandit(
        ACTION_NAMES, seed=0, feature_names=MODEL_FEATURES, reward_model="regression"
    )
    bandit.update(
        training_frame[MODEL_FEATURES],
        training_frame["action"],
        training_frame["propensity"],
        training_frame["reward"],
    )
    assert bandit._floors is None and bandit._intercepts is not None
    return bandit
