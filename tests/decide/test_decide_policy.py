"""DecisionPolicy: holdout, rules, overrides, kill switch, fallbacks, ids, and the log."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pandas as pd
import pytest

from journey_pipeline.actions import ACTION_NAMES
from journey_pipeline.decide.bandit import ContextualBandit
from journey_pipeline.decide.log import (
    DECISION_LOG_COLUMNS,
    append_decisions,
    last_offer_times,
    read_decisions,
)
from journey_pipeline.decide.policy import (
    DecisionPolicy,
    PolicyRules,
    autonomy_enabled,
    clear_override,
    holdout_mask,
    load_overrides,
    set_autonomy,
    set_override,
)
from journey_pipeline.decide.synthetic import synthetic_contexts
from journey_pipeline.features.contract import MODEL_FEATURES
from journey_pipeline.settings import load_settings
from journey_pipeline.warehouse import connect, ensure_core_schema

DECIDED_AT = pd.Timestamp("2026-02-10T09:30:00Z")


def _triggers(contact_ids, *, at=DECIDED_AT, prefix="evt") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "contact_id": list(contact_ids),
            "trigger_event_id": [f"{prefix}-{c}" for c in contact_ids],
            "trigger_type": "cart.abandoned",
            "decided_at": at,
        }
    )


def _eligible_contexts(n: int, seed: int) -> pd.DataFrame:
    """Contexts with no rule firing by themselves: not churned, no recent offer."""
    contexts = synthetic_contexts(n, seed=seed)
    contexts["lifecycle_stage_rank"] = 3.0
    contexts["lifecycle_stage"] = "sql"
    contexts["days_since_last_action"] = np.nan
    return contexts


@pytest.fixture
def warehouse_con():
    con = connect(load_settings().warehouse_path)
    ensure_core_schema(con)
    yield con
    con.close()


def _rules(frame: pd.DataFrame) -> pd.Series:
    return frame["rules_applied"].map(json.loads)


def test_holdout_share_and_stability():
    ids = [f"C-{i:06d}" for i in range(50_000)]
    mask = holdout_mask(ids)
    assert abs(mask.mean() - 0.10) < 4 * np.sqrt(0.1 * 0.9 / 50_000)
    assert np.array_equal(mask, holdout_mask(list(reversed(ids)))[::-1])  # per contact
    assert holdout_mask(ids, share=0.25).mean() == pytest.approx(0.25, abs=0.01)
    assert (holdout_mask(ids, share=0.25) >= mask).all()  # nested: growing keeps members


def test_holdout_contacts_always_get_no_offer(trained_bandit):
    contexts = _eligible_contexts(5_000, seed=1)
    policy = DecisionPolicy(trained_bandit, model_version="3")
    decisions = policy.decide(contexts, _triggers(contexts.index))
    held = decisions[decisions["holdout"]]
    assert 0.08 < len(held) / len(decisions) < 0.12
    assert (held["action"] == "no_offer").all() and (held["propensity"] == 1.0).all()
    assert (_rules(held).map(tuple) == ("holdout",)).all()
    # Stable: a later trigger for the same contacts keeps the same assignment.
    later = policy.decide(contexts, _triggers(contexts.index, prefix="later"))
    assert later["holdout"].equals(decisions["holdout"])
    # The rest is decided by the bandit with its exact propensity.
    free = decisions[~decisions["holdout"]]
    probabilities = trained_bandit.action_probabilities(
        contexts.loc[free["contact_id"], MODEL_FEATURES]
    )
    chosen = probabilities.to_numpy()[
        np.arange(len(free)), probabilities.columns.get_indexer(free["action"])
    ]
    assert np.allclose(free["propensity"].to_numpy(), chosen)
    assert set(free["action"]) == set(ACTION_NAMES)
    assert (_rules(free).map(len) == 0).all() and free["fallback_reason"].isna().all()


def test_decision_log_shape_and_content(trained_bandit):
    contexts = _eligible_contexts(50, seed=2)
    decisions = DecisionPolicy(trained_bandit, model_version="3").decide(
        contexts, _triggers(contexts.index)
    )
    assert list(decisions.columns) == DECISION_LOG_COLUMNS
    row = decisions.iloc[0]
    assert row["decided_at"] == pd.Timestamp("2026-02-10 09:30:00")  # naive UTC
    assert str(row["decision_date"]) == "2026-02-10"
    assert row["mode"] == "live" and row["model_version"] == "3"
    expected = json.loads(row["expected_rewards"])
    assert set(expected) == set(ACTION_NAMES) and all(np.isfinite(list(expected.values())))
    explanation = json.loads(row["explanation"])
    assert 1 <= len(explanation) <= 3 and set(explanation[0]) == {"feature", "contribution"}


def test_decision_ids_are_reproducible_and_the_log_is_idempotent(trained_bandit, warehouse_con):
    contexts = _eligible_contexts(400, seed=3)
    triggers = _triggers(contexts.index)
    policy = DecisionPolicy(trained_bandit, model_version="3")
    first = policy.decide(contexts, triggers)
    rerun = DecisionPolicy(trained_bandit, model_version="3").decide(contexts, triggers)
    pd.testing.assert_frame_equal(first, rerun)
    # A re-run of part of the batch, in another order, reproduces those decisions.
    part = triggers.iloc[::-3]
    pd.testing.assert_frame_equal(
        policy.decide(contexts, part).reset_index(drop=True),
        first.iloc[::-3].reset_index(drop=True),
    )
    assert first["decision_id"].is_unique
    other_policy = DecisionPolicy(trained_bandit, model_version="4").decide(contexts, triggers)
    assert not set(other_policy["decision_id"]) & set(first["decision_id"])

    assert append_decisions(warehouse_con, first) == 400
    assert append_decisions(warehouse_con, rerun) == 0
    assert append_decisions(warehouse_con, pd.concat([first.head(5), other_policy.head(5)])) == 5
    stored = read_decisions(warehouse_con, policy_version=policy.policy_version)
    assert len(stored) == 400
    merged = stored.set_index("decision_id").loc[first["decision_id"]]
    assert (merged["action"].to_numpy() == first["action"].to_numpy()).all()
    assert np.allclose(merged["propensity"], first["propensity"])
    assert merged["rules_applied"].map(json.loads).tolist() == _rules(first).tolist()
    assert len(read_decisions(warehouse_con, start="2026-02-11")) == 0
    assert len(read_decisions(warehouse_con, contact_ids=["C-000001"], mode="live")) == 2


def test_frequency_cap_from_features_log_and_batch(trained_bandit, warehouse_con):
    contexts = _eligible_contexts(3_000, seed=4)
    contexts.loc[contexts.index[:1000], "days_since_last_action"] = 3.0
    policy = DecisionPolicy(trained_bandit, model_version="3")
    decisions = policy.decide(contexts, _triggers(contexts.index))
    recent = decisions.iloc[:1000]
    capped = recent[~recent["holdout"]]
    assert (capped["action"] == "no_offer").all() and (capped["propensity"] == 1.0).all()
    assert (_rules(capped).map(tuple) == ("frequency_cap",)).all()
    assert (decisions.iloc[1000:]["action"] != "no_offer").any()

    # An offer logged since the feature cutoff caps as well (from the decision log).
    append_decisions(warehouse_con, decisions)
    offered = decisions[(decisions["action"] != "no_offer")]["contact_id"]
    assert set(last_offer_times(warehouse_con).index) == set(offered)
    two_days_later = DecisionPolicy.from_warehouse(warehouse_con, trained_bandit, model_version="3")
    again = two_days_later.decide(
        contexts, _triggers(contexts.index, at=DECIDED_AT + pd.Timedelta(days=2), prefix="next")
    )
    again = again.set_index("contact_id").loc[offered]
    assert (again["action"] == "no_offer").all()
    assert (again["rules_applied"].map(json.loads).map(tuple) == ("frequency_cap",)).all()
    eight_days_later = two_days_later.decide(
        contexts, _triggers(contexts.index, at=DECIDED_AT + pd.Timedelta(days=8), prefix="n8")
    )
    assert (eight_days_later.set_index("contact_id").loc[offered, "action"] != "no_offer").any()

    # Two triggers for one contact in a batch: at most one offer.
    free = decisions[(decisions["action"] != "no_offer")]["contact_id"].iloc[:200]
    doubled = pd.concat([_triggers(free, prefix="x"), _triggers(free, prefix="y")])
    batch = policy.decide(contexts, doubled)
    offers = batch[batch["action"] != "no_offer"].groupby("contact_id").size()
    assert offers.max() == 1
    assert (_rules(batch).map(tuple) == ("frequency_cap",)).any()


def test_overrides_and_unknown_override_action(trained_bandit, warehouse_con):
    contexts = _eligible_contexts(300, seed=5)
    not_held = [c for c in contexts.index if not holdout_mask([c])[0]][:3]
    set_override(warehouse_con, not_held[0], "offer_b", who="ana", why="VIP complaint")
    set_override(warehouse_con, not_held[1], "no_offer", who="ana", why="asked for no offers")
    assert load_overrides(warehouse_con) == {not_held[0]: "offer_b", not_held[1]: "no_offer"}
    policy = DecisionPolicy.from_warehouse(warehouse_con, trained_bandit, model_version="3")
    decisions = policy.decide(contexts, _triggers(contexts.index)).set_index("contact_id")
    for contact, action in ((not_held[0], "offer_b"), (not_held[1], "no_offer")):
        assert decisions.loc[contact, "action"] == action
        assert decisions.loc[contact, "propensity"] == 1.0
        assert json.loads(decisions.loc[contact, "rules_applied"]) == ["override"]
    clear_override(warehouse_con, not_held[1], who="ana", why="resolved")
    assert load_overrides(warehouse_con) == {not_held[0]: "offer_b"}
    history = warehouse_con.execute("SELECT count(*) FROM decide.override_history").fetchone()[0]
    assert history == 3

    with pytest.raises(ValueError, match="unknown action"):
        set_override(warehouse_con, not_held[2], "offer_zz", who="ana", why="typo")
    with pytest.raises(ValueError, match="unknown actions"):
        DecisionPolicy(trained_bandit, overrides={not_held[2]: "offer_zz"})
    # A stale row written behind the API is refused when the configuration is loaded.
    warehouse_con.execute(
        "INSERT INTO decide.overrides VALUES (?, 'offer_retired', 'bob', 'old', now())",
        [not_held[2]],
    )
    with pytest.raises(ValueError, match="offer_retired"):
        load_overrides(warehouse_con)
    with pytest.raises(ValueError, match="offer_retired"):
        DecisionPolicy.from_warehouse(warehouse_con, trained_bandit, model_version="3")


def test_kill_switch(trained_bandit, warehouse_con):
    contexts = _eligible_contexts(500, seed=6)
    assert autonomy_enabled(warehouse_con)
    set_override(warehouse_con, contexts.index[0], "offer_a", who="ana", why="test")
    set_autonomy(warehouse_con, False, who="oncall", why="incident 42: wrong prices")
    assert not autonomy_enabled(warehouse_con)
    policy = DecisionPolicy.from_warehouse(warehouse_con, trained_bandit, model_version="3")
    decisions = policy.decide(contexts, _triggers(contexts.index))
    assert (decisions["action"] == "no_offer").all() and (decisions["propensity"] == 1.0).all()
    rules = _rules(decisions).map(tuple)
    assert set(rules) == {("kill_switch",), ("holdout",)}
    set_autonomy(warehouse_con, True, who="oncall", why="prices fixed")
    policy = DecisionPolicy.from_warehouse(warehouse_con, trained_bandit, model_version="3")
    assert (policy.decide(contexts, _triggers(contexts.index))["action"] != "no_offer").any()


def test_fallbacks_eligibility_and_bad_features(trained_bandit, warehouse_con):
    contexts = _eligible_contexts(400, seed=7)
    ids = list(contexts.index)
    free = [c for c in ids if not holdout_mask([c])[0]]
    contexts.loc[free[0], MODEL_FEATURES] = np.nan  # all-null feature row
    contexts.loc[free[1], "lifecycle_stage"] = "churned"
    contexts.loc[free[2], "spend_30d"] = np.inf
    contexts.loc[free[3], "avg_order_value_90d"] = -np.inf
    warehouse_con.execute(
        "INSERT INTO ops.erasures VALUES (?, TIMESTAMP '2026-02-01', 'evt-erase')", [free[4]]
    )
    policy = DecisionPolicy.from_warehouse(warehouse_con, trained_bandit, model_version="3")
    triggers = _triggers([*ids, "C-unknown"])  # a contact with no feature row at all
    decisions = policy.decide(contexts, triggers).set_index("contact_id")
    for contact in (free[0], "C-unknown"):
        row = decisions.loc[contact]
        assert row["action"] == "no_offer" and row["fallback_reason"] == "no_features"
        assert json.loads(row["rules_applied"]) == ["fallback"]
        assert json.loads(row["explanation"]) == []
        assert all(v is None for v in json.loads(row["expected_rewards"]).values())
    assert json.loads(decisions.loc[free[1], "rules_applied"]) == ["ineligible_churned"]
    assert json.loads(decisions.loc[free[4], "rules_applied"]) == ["erased"]
    for contact in (free[2], free[3]):
        assert decisions.loc[contact, "fallback_reason"] is None
        assert 0 < decisions.loc[contact, "propensity"] <= 1
    assert append_decisions(warehouse_con, decisions.reset_index()) == len(decisions)


def test_model_error_falls_back_without_crashing(trained_bandit):
    broken = ContextualBandit(ACTION_NAMES, feature_names=["not_a_feature"], min_observations=1)
    broken.update(
        pd.DataFrame({"not_a_feature": [1.0, 2.0]}), ["offer_a", "no_offer"], [0.5, 0.5], [1.0, 0.0]
    )
    contexts = _eligible_contexts(20, seed=8)
    decisions = DecisionPolicy(broken, model_version="9").decide(
        contexts, _triggers(contexts.index)
    )
    free = decisions[~decisions["holdout"]]
    assert (free["action"] == "no_offer").all()
    assert free["fallback_reason"].str.startswith("model_error").all()


def test_cold_start_policy_and_shadow_mode():
    contexts = _eligible_contexts(3_000, seed=9)
    policy = DecisionPolicy(None)
    decisions = policy.decide(contexts, _triggers(contexts.index), mode="shadow")
    assert decisions["model_version"].isna().all() and (decisions["mode"] == "shadow").all()
    assert policy.policy_version.startswith("cold-start")
    free = decisions[~decisions["holdout"]]
    assert np.allclose(free["propensity"], 1 / 3)
    shares = free["action"].value_counts(normalize=True)
    assert np.allclose(shares.reindex(ACTION_NAMES), 1 / 3, atol=0.04)
    with pytest.raises(ValueError, match="mode"):
        policy.decide(contexts, _triggers(contexts.index), mode="dry-run")
    changed = DecisionPolicy(None, rules=PolicyRules(frequency_cap_days=14))
    assert changed.policy_version != policy.policy_version  # rules are part of the version


def test_duckdb_control_tables_have_who_why_when(warehouse_con):
    set_autonomy(warehouse_con, False, who="oncall", why="incident")
    row = warehouse_con.execute("SELECT enabled, who, why, set_at FROM decide.autonomy").fetchone()
    assert row[:3] == (False, "oncall", "incident") and row[3] is not None
    with pytest.raises(ValueError):
        set_autonomy(warehouse_con, True, who="", why="")
    assert isinstance(warehouse_con, duckdb.DuckDBPyConnection)


def test_the_policy_explores_more_while_a_drift_episode_is_open(trained_bandit, tmp_path):
    from journey_pipeline.decide.scoring import (
        DRIFT_EPSILON,
        DRIFT_EXPLORATION_DAYS,
        exploring_during_drift,
    )
    from journey_pipeline.learn.analysis import drift_episode_age

    history = tmp_path / "drift_history.parquet"
    contexts = synthetic_contexts(500, seed=4)[MODEL_FEATURES]
    assert exploring_during_drift(trained_bandit, tmp_path) is trained_bandit  # no report yet

    def checks(*shares):
        days = pd.date_range("2026-02-01", periods=len(shares)).date.astype(str)
        pd.DataFrame({"current_window": days, "drift_share": list(shares)}).to_parquet(history)

    checks(0.0, 0.5, None)  # a skipped check leaves the episode open
    assert drift_episode_age(tmp_path) is not None  # open
    explorer = exploring_during_drift(trained_bandit, tmp_path)
    assert explorer is not trained_bandit and trained_bandit.epsilon < DRIFT_EPSILON
    probabilities = explorer.action_probabilities(contexts).to_numpy()
    floor = DRIFT_EPSILON / len(ACTION_NAMES)
    assert probabilities.min() >= floor - 1e-12
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    # The same members pick the same actions: only the uniform share changed.
    base = trained_bandit.action_probabilities(contexts).to_numpy()
    eps = trained_bandit.epsilon
    np.testing.assert_allclose(
        (probabilities - floor) / (1 - DRIFT_EPSILON),
        (base - eps / len(ACTION_NAMES)) / (1 - eps),
        atol=1e-9,
    )
    decided = explorer.decide(contexts)
    assert decided["propensity"].min() >= floor - 1e-12
    checks(0.5, 0.1)  # the newest check is below the threshold: back to the champion itself
    assert exploring_during_drift(trained_bandit, tmp_path) is trained_bandit
    assert drift_episode_age(tmp_path) is None
    # An episode explores for DRIFT_EXPLORATION_DAYS feature days from its onset, then stops.
    checks(0.1, *[0.5] * DRIFT_EXPLORATION_DAYS)
    assert drift_episode_age(tmp_path) == DRIFT_EXPLORATION_DAYS - 1
    assert exploring_during_drift(trained_bandit, tmp_path).epsilon == DRIFT_EPSILON
    checks(0.1, *[0.5] * (DRIFT_EXPLORATION_DAYS + 1))
    assert drift_episode_age(tmp_path) == DRIFT_EXPLORATION_DAYS  # still open
    assert exploring_during_drift(trained_bandit, tmp_path) is trained_bandit
