"""A harmful policy version goes live; the guardrail rolls it back and the margin recovers.

A real MLflow registry holds two policy versions, both real contextual bandits pickled in the
production pyfunc wrapper: v1, trained on rewards that favour doing nothing, and v2, trained on
a corrupted reward signal that credits the costliest action (``offer_b``, a 5.00 perk) with
a huge margin, so it sends it to everybody. v1 is champion for three days, then v2 is promoted.

Each loop day, contacts of a simulated world are triggered; the persistent holdout gets the
default action and everybody else what the *current* champion (loaded from the registry)
chooses on their features. Each decision's reward is the simulator's exact expected margin of
the chosen action for that contact on that day (its oracle), and the decisions land in
``learn.outcomes`` as matured outcomes. Using the expectation instead of one noisy draw keeps
the world small: a few hundred decisions a day are enough for the confidence sequence to see
a 3-4 per user loss, where realised purchases would need many times more. Then the real
``guardrail`` asset runs through Dagster with its default configuration.

Expected: no rollback while v1 is live; v2 is rolled back to v1 within ``WINDOW_DAYS`` loop
days of its promotion, the rollback is recorded (control events and the champion history),
and the policy's margin per decision recovers to what it was under v1.
"""

from __future__ import annotations

import pickle
from datetime import date, datetime, timedelta

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import pytest

from journey_pipeline.actions import ACTION_NAMES, ACTIONS, DEFAULT_ACTION
from journey_pipeline.decide import registry
from journey_pipeline.decide.bandit import ContextualBandit
from journey_pipeline.decide.policy import holdout_mask
from journey_pipeline.learn.assets import guardrail
from journey_pipeline.learn.outcomes import OUTCOMES_DDL
from journey_pipeline.resources import JourneyResource
from journey_pipeline.sim.crm import LocalCrmStore
from journey_pipeline.sim.world import World
from journey_pipeline.warehouse import warehouse

START = date(2026, 1, 1)
CONTACTS = 6_000
TRIGGERED_PER_DAY = 700
SAFE_DAYS = 3  # v1 live
WINDOW_DAYS = 3  # the guardrail must roll v2 back within this many loop days
LOOP_DAYS = SAFE_DAYS + 6
FEATURES = ["lifecycle_stage_rank", "engagement_proxy"]


def trained_bandit(favoured: str, seed: int) -> ContextualBandit:
    """A real bandit whose training rewards credit ``favoured`` with a large margin."""
    rng = np.random.default_rng(seed)
    n = 600
    contexts = pd.DataFrame(
        {"lifecycle_stage_rank": rng.integers(0, 6, n), "engagement_proxy": rng.random(n)}
    ).astype(float)
    actions = rng.choice(ACTION_NAMES, n)
    rewards = np.where(actions == favoured, 100.0, 0.0) + rng.normal(0, 1, n)
    bandit = ContextualBandit(
        ACTION_NAMES, seed=seed, n_members=4, min_observations=100, shared_baseline=False
    )
    return bandit.update(contexts, actions, np.full(n, 1 / len(ACTION_NAMES)), rewards)


def register(bandit: ContextualBandit, settings, tmp_path, name: str) -> str:
    """Log ``bandit`` the way a retrain does (pyfunc wrapper, registered model)."""
    client = registry.configure_mlflow(settings)
    experiment = client.get_experiment_by_name(registry.EXPERIMENT_NAME)
    path = tmp_path / f"{name}.pkl"
    path.write_bytes(pickle.dumps(bandit))
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name=name):
        mlflow.log_param("data_valid_end", str(START))
        info = mlflow.pyfunc.log_model(
            name="policy",
            python_model=registry.BanditPolicyModel(),
            artifacts={"bandit": str(path)},
            registered_model_name=registry.MODEL_NAME,
            pip_requirements=[],
        )
    return str(info.registered_model_version)


def loop_day(world: World, con, day: int, rng: np.random.Generator) -> pd.DataFrame:
    """Decide for the day's triggered contacts with the current champion and record the
    outcomes. Out: the day's decisions with their rewards."""
    bandit, version = registry.load_policy_model(registry.CHAMPION)
    active = world.active_contacts()
    idx = rng.choice(active, size=min(TRIGGERED_PER_DAY, len(active)), replace=False)
    ids = world.contact_ids(idx)
    stage = world.contacts["stage"][idx].astype(float)
    contexts = pd.DataFrame(
        {"lifecycle_stage_rank": stage, "engagement_proxy": rng.random(len(idx))}
    )
    chosen = bandit.decide(contexts, draw_keys=[f"{c}:{day}" for c in ids])
    holdout = holdout_mask(ids)
    action = np.where(holdout, DEFAULT_ACTION, chosen["action"].to_numpy())
    propensity = np.where(holdout, 1.0, chosen["propensity"].to_numpy())
    margins = world.expected_margins(idx, world.day)
    reward = margins.to_numpy()[np.arange(len(idx)), [ACTION_NAMES.index(a) for a in action]]
    cost = np.array([ACTIONS[a].fixed_cost for a in action])
    decided_at = datetime.combine(START + timedelta(days=day), datetime.min.time())
    frame = pd.DataFrame(
        {
            "decision_id": [f"D-{day}-{i}" for i in range(len(idx))],
            "contact_id": ids,
            "decided_at": decided_at,
            "decision_date": decided_at.date(),
            "trigger_type": "cart.abandoned",
            "policy_version": "test",
            "model_version": version,
            "action": action,
            "propensity": propensity,
            "holdout": holdout,
            "expected_reward": np.nan,
            "lifecycle_stage": "lead",
            "window_days": 7,
            "window_end": decided_at + timedelta(days=7),
            "payments": 0,
            "revenue": reward + cost,
            "converted": reward + cost > 0,
            "delivered": action != DEFAULT_ACTION,
            "opened": False,
            "clicked": False,
            "fixed_cost": cost,
            "reward": reward,
            "matured": True,
            "as_of": decided_at + timedelta(days=7),
            "built_at": decided_at,
        }
    )
    con.execute("INSERT INTO learn.outcomes SELECT * FROM frame")
    return frame


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_harmful_champion_is_rolled_back_and_margin_recovers(settings, tmp_path):
    safe = register(trained_bandit("no_offer", seed=1), settings, tmp_path, "safe")
    harmful = register(trained_bandit("offer_b", seed=2), settings, tmp_path, "harmful")
    registry.promote(safe, "test", "first champion", settings)
    with warehouse(settings.warehouse_path) as con:
        con.execute(OUTCOMES_DDL)

    world = World.create(CONTACTS, seed=5, start_date=START)
    crm = LocalCrmStore(settings.crm_path)
    rng = np.random.default_rng(0)
    resources = {"journey": JourneyResource()}
    daily, rolled_back_on = [], None
    with dg.instance_for_test() as instance:
        for day in range(LOOP_DAYS):
            if day == SAFE_DAYS:
                registry.promote(harmful, "test", "deliberately harmful version", settings)
            with warehouse(settings.warehouse_path) as con:
                frame = loop_day(world, con, day, rng)
            world.step(crm, settings.landing_dir)
            policy = frame[~frame["holdout"]]
            daily.append(
                {
                    "day": day,
                    "version": frame["model_version"].iloc[0],
                    "offer_b_share": float((policy["action"] == "offer_b").mean()),
                    "margin": float(policy["reward"].mean()),
                }
            )
            result = dg.materialize([guardrail], resources=resources, instance=instance)
            assert result.success
            metadata = result.asset_materializations_for_node("guardrail")[0].metadata
            champion = registry.alias_version(registry.configure_mlflow(settings), "champion")
            if day < SAFE_DAYS:
                assert metadata["breach"].value is False, metadata["reasons"]
            if champion == safe and day >= SAFE_DAYS and rolled_back_on is None:
                rolled_back_on = day
                assert metadata["breach"].value is True
                assert "margin per user is below the holdout" in metadata["reasons"].value
    table = pd.DataFrame(daily)

    assert rolled_back_on is not None, table
    assert rolled_back_on - SAFE_DAYS < WINDOW_DAYS
    with warehouse(settings.warehouse_path, read_only=True) as con:
        events = con.execute(
            "SELECT action, version, previous, who, why FROM decide.control_events"
        ).fetchall()
    assert len(events) == 1
    action, version, previous, who, why = events[0]
    assert (action, version, previous, who) == ("rollback", safe, harmful, "guardrail")
    assert "with confidence" in why
    history = registry.champion_history(settings)
    assert history[-1]["action"] == "rollback" and history[-1]["version"] == safe

    harmful_days = table[table["version"] == harmful]
    before = table[table["day"] < SAFE_DAYS]
    after = table[table["day"] > rolled_back_on]
    assert (harmful_days["offer_b_share"] > 0.9).all()
    assert len(after) >= 2 and (after["version"] == safe).all()
    # The margin per decision fell under v2 and is back at v1's level after the rollback.
    assert harmful_days["margin"].mean() < before["margin"].mean() - 2.0
    assert after["margin"].mean() > harmful_days["margin"].mean() + 2.0
    assert after["margin"].mean() == pytest.approx(before["margin"].mean(), abs=1.0)
