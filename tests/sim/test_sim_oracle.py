"""Ground truth: the oracle's expected margins are right, acting on them pays, drift moves
them, and what the features can see carries signal about the hidden traits."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import insert_tasks, read_events

from journey_pipeline.actions import ACTION_NAMES, ACTIONS
from journey_pipeline.sim.crm import LocalCrmStore
from journey_pipeline.sim.world import WINDOW_DAYS, World

START = date(2026, 1, 1)
POLICIES = ["oracle", *ACTION_NAMES, "uniform_random"]


def realised_margins(base: Path, name: str, contact_ids: list[str], actions: np.ndarray):
    """Apply ``actions`` to a copy of the saved world, simulate the 7-day window and return
    each contact's realised margin: its payments in the window minus the fixed cost."""
    home = base / name
    home.mkdir()
    shutil.copy(base / "crm.db", home / "crm.db")
    world = World.load(base / "state")
    revenue = dict.fromkeys(contact_ids, 0.0)
    with LocalCrmStore(home / "crm.db") as crm:
        insert_tasks(
            crm,
            [(f"{name}-{c}", c, a) for c, a in zip(contact_ids, actions, strict=True)],
            f"{world.current_date}T00:00:00Z",
        )
        for _ in range(WINDOW_DAYS):
            for e in read_events(world.step(crm, home / "landing").events_path):
                if e["type"] == "payment.succeeded" and e["payload"]["contact_id"] in revenue:
                    revenue[e["payload"]["contact_id"]] += e["payload"]["amount"]
    cost = np.array([ACTIONS[a].fixed_cost for a in actions])
    return np.array([revenue[c] for c in contact_ids]) - cost


@pytest.fixture(scope="module")
def policy_runs(tmp_path_factory):
    """One world after a warm-up of three days, then every policy applied to all active
    contacts in a copy of it. Same seed, so the comparisons are paired."""
    base = tmp_path_factory.mktemp("policies")
    world = World.create(15_000, 11, START)
    with LocalCrmStore(base / "crm.db") as crm:
        for _ in range(3):
            world.step(crm, base / "warmup")
    world.save(base / "state")
    idx = world.active_contacts()
    ids = world.contact_ids(idx)
    expected = world.expected_margins(idx, world.day)
    choice = {
        "oracle": world.oracle_actions(idx, world.day),
        "uniform_random": np.random.default_rng(0).choice(ACTION_NAMES, size=len(idx)),
        **{a: np.array([a] * len(idx), dtype=object) for a in ACTION_NAMES},
    }
    realised = {p: realised_margins(base, p, ids, choice[p]) for p in POLICIES}
    # Contacts that abandoned a cart yesterday: the population decisions are taken on.
    triggered = world.contacts["last_cart_day"][idx] == world.day - 1
    return expected, choice, realised, triggered


def test_oracle_actions_maximise_expected_margin(policy_runs):
    expected, choice, _, triggered = policy_runs
    assert (expected.idxmax(axis=1).to_numpy() == choice["oracle"]).all()
    shares = pd.Series(choice["oracle"]).value_counts(normalize=True)
    assert set(shares.index) == set(ACTION_NAMES)
    # After a cart abandon every action is the best one for a real share of contacts.
    shares = pd.Series(choice["oracle"][triggered]).value_counts(normalize=True)
    assert triggered.sum() > 300
    assert shares.reindex(ACTION_NAMES).min() > 0.05, shares


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "oracle"])
def test_oracle_policy_realises_more_margin(policy_runs, policy):
    _, _, realised, _ = policy_runs
    diff = realised["oracle"] - realised[policy]
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    assert diff.mean() > 3 * se, (diff.mean(), se)


@pytest.mark.parametrize("policy", POLICIES)
def test_expected_margin_matches_realised_mean(policy_runs, policy):
    expected, choice, realised, _ = policy_runs
    columns = [ACTION_NAMES.index(a) for a in choice[policy]]
    predicted = expected.to_numpy()[np.arange(len(columns)), columns]
    residual = realised[policy] - predicted
    se = residual.std(ddof=1) / np.sqrt(len(residual))
    assert abs(residual.mean()) < 4 * se, (residual.mean(), se)


def test_offers_change_purchase_probability_measurably(policy_runs):
    expected, _, _, _ = policy_runs
    spread = expected[["offer_a", "offer_b"]].add(
        [ACTIONS["offer_a"].fixed_cost, ACTIONS["offer_b"].fixed_cost]
    )
    # Revenue moves by more than a dollar either way for a large share of contacts.
    moved = (spread.sub(expected["no_offer"], axis=0).abs() > 1.0).any(axis=1)
    assert moved.mean() > 0.15


def test_drift_changes_the_best_action_for_many_contacts():
    world = World.create(20_000, 3, START, drift_day=10)
    idx = world.active_contacts()
    before = world.oracle_actions(idx, 9)
    after = world.oracle_actions(idx, 10)
    assert (before == world.oracle_actions(idx, 0)).all()
    assert (before != after).mean() > 0.15


def test_drift_shifts_the_arrivals(tmp_path):
    world = World.create(20_000, 8, START, drift_day=1)
    with LocalCrmStore(tmp_path / "crm.db") as crm:
        first = world.step(crm, tmp_path).counts["contact.created"] - 20_000
        n_before = world.n_contacts
        second = world.step(crm, tmp_path).counts["contact.created"]
    assert second > 2 * first
    new = world.traits(np.arange(n_before, world.n_contacts))
    assert (new["segment"] == "price_sensitive").mean() > 0.3


def test_observable_behaviour_carries_signal_about_traits(tmp_path):
    world = World.create(6_000, 21, START)
    events = []
    with LocalCrmStore(tmp_path / "crm.db") as crm:
        for _ in range(14):
            events += read_events(world.step(crm, tmp_path).events_path)
    frame = pd.DataFrame(
        [(e["type"], e["payload"]["contact_id"]) for e in events], columns=["type", "contact_id"]
    )
    per_contact = pd.crosstab(frame["contact_id"], frame["type"])
    traits = world.traits().set_index("contact_id").join(per_contact, how="inner")
    by_segment = traits.groupby("segment")[["cart.abandoned", "product.viewed"]].mean()
    assert (
        by_segment.loc["price_sensitive", "cart.abandoned"]
        > 1.5 * by_segment.loc["indifferent", "cart.abandoned"]
    )
    assert (
        by_segment.loc["perk_lover", "product.viewed"]
        > 1.2 * by_segment.loc["indifferent", "product.viewed"]
    )
    assert np.corrcoef(traits["engagement"], traits["product.viewed"])[0, 1] > 0.3
