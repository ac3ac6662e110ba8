"""Regret against the simulator's oracle, on small worlds driven by hand-made decision logs.

Each world is stepped day by day the way the loop drives it: a day's decisions are taken at
00:00 of the day they apply, their offers become CRM tasks, then the day is simulated. The
oracle's margins are recorded at decision time (exact, since the world is on that day), so the
report's values, computed afterwards by replaying the world, can be checked against them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from journey_pipeline.actions import ACTION_NAMES
from journey_pipeline.decide.log import append_decisions
from journey_pipeline.learn.regret import (
    ORACLE,
    POLICY,
    UNIFORM,
    OracleReplayError,
    RegretReport,
    decision_margins,
    load_regret_report,
    oracle_calibration,
    plot_cumulative,
    plot_regret,
    policy_regret,
    realised_incremental,
    static_name,
    weekly_shares,
)
from journey_pipeline.sim.crm import LocalCrmStore
from journey_pipeline.sim.world import World
from journey_pipeline.warehouse import warehouse

START = date(2026, 1, 1)
CONTACTS = 1_500
DAYS = 5
TRIGGERED_PER_DAY = 120
HOLDOUT_PER_DAY = 10

# A policy picks actions for one day: (contact ids, oracle margins frame, rng) -> actions.
Policy = Callable[[list[str], pd.DataFrame, np.random.Generator], np.ndarray]


def oracle_policy(ids: list[str], margins: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    return margins[ACTION_NAMES].idxmax(axis=1).to_numpy(dtype=object)


def always(action: str) -> Policy:
    def policy(ids: list[str], margins: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
        return np.array([action] * len(ids), dtype=object)

    return policy


def random_policy(ids: list[str], margins: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(np.array(ACTION_NAMES, dtype=object), size=len(ids))


def run_world(
    base: Path, policy: Policy, seed: int = 5
) -> tuple[World, pd.DataFrame, pd.DataFrame]:
    """Simulate ``DAYS`` days deciding with ``policy`` for random active contacts each day,
    each contact at most once, so every decision owns its whole window (the first day has no
    decisions: the CRM is empty until it is synced).

    Out: (the world after the run, the decision log, the oracle margins recorded at decision
    time, indexed by decision_id, one column per action)."""
    world = World.create(CONTACTS, seed, START)
    rng = np.random.default_rng(seed)
    log_rows, truth_parts = [], []
    decided = np.zeros(0, dtype=np.int64)
    with LocalCrmStore(base / "crm.db") as crm:
        for day in range(DAYS):
            if day:
                active = np.setdiff1d(world.active_contacts(), decided)
                picked = rng.choice(active, size=TRIGGERED_PER_DAY, replace=False)
                decided = np.concatenate([decided, picked])
                ids = world.contact_ids(picked)
                margins = world.expected_margins(picked, day)
                actions = policy(ids, margins, rng)
                holdout = np.zeros(len(ids), dtype=bool)
                holdout[:HOLDOUT_PER_DAY] = True
                actions = np.where(holdout, "no_offer", actions)
                decided_at = datetime.combine(START + timedelta(days=day), datetime.min.time())
                decision_ids = [f"d-{day}-{cid}" for cid in ids]
                log_rows.append(
                    pd.DataFrame(
                        {
                            "decision_id": decision_ids,
                            "contact_id": ids,
                            "decided_at": decided_at,
                            "mode": "live",
                            "action": actions,
                            "holdout": holdout,
                            "rules_applied": ['["holdout"]' if h else "[]" for h in holdout],
                        }
                    )
                )
                truth_parts.append(margins.set_axis(decision_ids))
                for did, cid, action in zip(decision_ids, ids, actions, strict=True):
                    if action != "no_offer":  # the act stage writes offers only
                        crm.create_task(did, cid, str(action), decided_at.isoformat())
            world.step(crm, base / "landing")
    return world, pd.concat(log_rows, ignore_index=True), pd.concat(truth_parts)


def incremental_truth(truth: pd.DataFrame, log: pd.DataFrame) -> pd.DataFrame:
    """Per non-holdout decision, each action's margin minus no_offer's, from recorded truth."""
    live = log.loc[~log["holdout"], "decision_id"]
    recorded = truth.loc[live, ACTION_NAMES]
    return recorded.sub(recorded["no_offer"], axis=0)


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("oracle_run")
    world, log, truth = run_world(base, oracle_policy)
    return world, log, truth, policy_regret(log, world, workdir=base)


@pytest.fixture(scope="module")
def random_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("random_run")
    world, log, truth = run_world(base, random_policy)
    return world, log, truth, policy_regret(log, world, workdir=base)


def test_a_later_decision_shortens_the_window_the_oracle_values(tmp_path):
    """Each payment belongs to the contact's latest decision before it (as learn.outcomes
    credits it), so a decision's value counts the days up to the contact's next decision."""
    world = World.create(CONTACTS, 3, START)
    rng = np.random.default_rng(3)
    rows, whole, two_days = [], {}, {}
    first: np.ndarray | None = None
    with LocalCrmStore(tmp_path / "crm.db") as crm:
        for day in range(5):
            if day in (1, 3):
                active = world.active_contacts()
                picked = (
                    rng.choice(active, size=200, replace=False)
                    if first is None
                    else np.intersect1d(first, active)[:100]
                )
                ids = world.contact_ids(picked)
                decision_ids = [f"d-{day}-{cid}" for cid in ids]
                if first is None:
                    first = picked
                    whole.update(
                        zip(
                            ids,
                            world.expected_margins(picked, day).to_numpy().tolist(),
                            strict=True,
                        )
                    )
                    by_action = [world.expected_margin(picked, a, day, 2) for a in ACTION_NAMES]
                    two_days.update(zip(ids, np.column_stack(by_action).tolist(), strict=True))
                decided_at = datetime.combine(START + timedelta(days=day), datetime.min.time())
                rows.append(
                    pd.DataFrame(
                        {
                            "decision_id": decision_ids,
                            "contact_id": ids,
                            "decided_at": decided_at,
                            "mode": "live",
                            "action": "no_offer",
                            "holdout": False,
                        }
                    )
                )
            world.step(crm, tmp_path / "landing")
    log = pd.concat(rows, ignore_index=True)
    margins = decision_margins(log, world, workdir=tmp_path)[0].set_index("decision_id")
    again = set(log.loc[log["decision_id"].str.startswith("d-3-"), "contact_id"])
    assert len(again) > 50
    columns = [f"margin_{a}" for a in ACTION_NAMES]
    first_day = margins[margins.index.str.startswith("d-1-")]
    assert len(first_day) == 200
    for _, row in first_day.iterrows():
        contact = row["contact_id"]
        # Whole window for a contact decided once; two days for one decided again on day 3.
        expected = two_days[contact] if contact in again else whole[contact]
        np.testing.assert_allclose(row[columns].to_numpy(float), expected, rtol=1e-9)
        assert not np.allclose(two_days[contact], whole[contact])


def test_oracle_policy_has_zero_regret(oracle_run):
    _, log, truth, report = oracle_run
    inc = incremental_truth(truth, log)
    assert report.totals["decisions"] == len(inc)
    assert report.totals["oracle"] > 0
    assert report.totals["regret"] == pytest.approx(0.0, abs=1e-9)
    assert report.share == pytest.approx(1.0)
    assert np.allclose(report.daily["regret"], 0.0, atol=1e-9)
    assert report.totals["regret_by_rule"] == {"bandit": pytest.approx(0.0, abs=1e-9)}
    # Decisions with and without tasks both come out exact: from the world's log and the replay.
    assert set(report.totals["oracle_sources"]) == {"applied_task", "replay"}
    assert report.replay_max_error == pytest.approx(0.0, abs=1e-9)


def test_margins_match_the_oracle_at_decision_time(random_run):
    _, log, truth, report = random_run
    got = report.decisions.set_index("decision_id")
    assert len(got) == len(log)  # holdout kept in the per-decision table
    columns = [f"margin_{a}" for a in ACTION_NAMES]
    np.testing.assert_allclose(
        got.loc[truth.index, columns].to_numpy(), truth[ACTION_NAMES].to_numpy(), rtol=1e-12
    )
    assert (got.loc[truth.index, "oracle_action"] == truth[ACTION_NAMES].idxmax(axis=1)).all()


def test_static_policy_values_equal_per_action_sums(tmp_path):
    world, log, truth = run_world(tmp_path, always("offer_b"), seed=9)
    report = policy_regret(log, world, workdir=tmp_path)
    inc = incremental_truth(truth, log)
    sums = report.totals["incremental"]
    assert sums[POLICY] == pytest.approx(inc["offer_b"].sum())
    assert sums[POLICY] == pytest.approx(sums[static_name("offer_b")])
    for action in ACTION_NAMES:
        assert sums[static_name(action)] == pytest.approx(inc[action].sum())
    assert sums[static_name("no_offer")] == 0.0
    assert sums[ORACLE] == pytest.approx(inc.max(axis=1).sum())
    assert sums[UNIFORM] == pytest.approx(inc.mean(axis=1).sum())
    best = max(ACTION_NAMES, key=lambda a: inc[a].sum())
    assert report.best_static == static_name(best)
    daily_offer_b = inc["offer_b"].groupby(lambda did: int(did.split("-")[1])).sum()
    np.testing.assert_allclose(report.daily[POLICY].to_numpy(), daily_offer_b.to_numpy())


def test_share_and_regret_are_computed_from_the_logged_actions(random_run):
    _, log, truth, report = random_run
    inc = incremental_truth(truth, log)
    taken = log.set_index("decision_id").loc[inc.index, "action"]
    policy = sum(inc.at[d, a] for d, a in taken.items())
    oracle = inc.max(axis=1).sum()
    assert report.totals["policy"] == pytest.approx(policy)
    assert report.totals["regret"] == pytest.approx(oracle - policy)
    assert report.share == pytest.approx(policy / oracle)
    assert report.share < 1  # random choices leave margin on the table
    assert report.daily["cum_share"].iloc[-1] == pytest.approx(report.share)
    assert report.daily["cum_regret"].iloc[-1] == pytest.approx(oracle - policy)
    assert report.daily["decisions"].sum() == len(inc)
    by_version = report.totals["by_model_version"]
    assert list(by_version) == ["cold start"]  # the log names no model version
    assert by_version["cold start"]["share"] == pytest.approx(report.share)
    table = report.table().set_index("policy")
    assert table.loc[ORACLE, "share_of_oracle"] == pytest.approx(1.0)
    assert "| policy |" in report.markdown()


def test_weekly_shares_split_the_run_into_weeks_that_add_up(random_run):
    _, log, truth, report = random_run
    weeks = weekly_shares(report)
    daily = report.daily
    assert [w["first_day"] for w in weeks] == [str(d) for d in daily.index[::7]]
    assert sum(w["decisions"] for w in weeks) == daily["decisions"].sum()
    for week in weeks:
        days = daily.loc[
            [d for d in daily.index if week["first_day"] <= str(d) <= week["last_day"]]
        ]
        assert week["share"] == pytest.approx(days[POLICY].sum() / days[ORACLE].sum())
        best = max(days[static_name(a)].sum() for a in report.actions)
        assert week["best_static_share"] == pytest.approx(best / days[ORACLE].sum())
        assert week["models"] == ["cold start"]


def test_compared_policy_is_evaluated_on_the_same_decisions(random_run):
    world, log, truth, base = random_run
    live = log[~log["holdout"]]
    oracle_picks = truth.loc[live["decision_id"], ACTION_NAMES].idxmax(axis=1)
    report = policy_regret(log, world, compare={"challenger": oracle_picks})
    assert report.totals["incremental"]["challenger"] == pytest.approx(report.totals["oracle"])
    assert "challenger" in report.policies
    # Adding a policy to a finished report reuses its margins and gives the same figures.
    added = base.with_policies({"challenger": oracle_picks})
    assert added.totals["incremental"] == pytest.approx(report.totals["incremental"])
    assert added.totals["policy"] == pytest.approx(base.totals["policy"])
    with pytest.raises(ValueError, match="no action for 1"):
        policy_regret(log, world, compare={"partial": oracle_picks.iloc[1:]})


def test_shadow_unknown_and_future_decisions_are_excluded(random_run):
    world, log, _, report = random_run
    extra = log.iloc[:3].copy()
    extra["decision_id"] = ["shadow-1", "ghost-1", "future-1"]
    extra["mode"] = ["shadow", "live", "live"]
    extra["contact_id"] = [extra["contact_id"].iloc[0], "C-9999999", extra["contact_id"].iloc[2]]
    extra.loc[extra.index[2], "decided_at"] = pd.Timestamp(world.current_date + timedelta(days=3))
    again = policy_regret(pd.concat([log, extra], ignore_index=True), world)
    assert again.excluded["shadow"] == 1
    assert again.excluded["unknown_contact"] == 1
    assert again.excluded["not_yet_applied"] == 1
    assert again.totals["policy"] == pytest.approx(report.totals["policy"])


def test_decisions_for_the_day_about_to_run_use_the_world_directly(random_run):
    world, log, _, _ = random_run
    ids = world.contact_ids(world.active_contacts()[:20])
    pending = pd.DataFrame(
        {
            "decision_id": [f"next-{c}" for c in ids],
            "contact_id": ids,
            "decided_at": pd.Timestamp(world.current_date),
            "action": "offer_a",
            "holdout": False,
        }
    )
    report = policy_regret(pending, world)
    assert report.totals["oracle_sources"] == {"world": 20}
    expected = world.expected_margins(ids, world.day)
    assert report.totals["policy"] == pytest.approx(
        (expected["offer_a"] - expected["no_offer"]).sum()
    )


def test_a_world_that_cannot_be_reproduced_is_an_error(random_run):
    world, log, _, _ = random_run
    altered = World(**{**world.__dict__, "seed": world.seed + 1})
    with pytest.raises(OracleReplayError):
        policy_regret(log, altered)


def test_realised_incremental_against_the_holdout():
    outcomes = pd.DataFrame(
        {
            "decision_id": [f"d{i}" for i in range(8)],
            "decision_date": ["2026-01-02"] * 4 + ["2026-01-03"] * 4,
            "holdout": [False, False, False, True, False, False, True, True],
            "reward": [10.0, 0.0, 20.0, 5.0, 30.0, 0.0, 0.0, 10.0],
            "matured": [True] * 7 + [False],
        }
    )
    daily, totals = realised_incremental(outcomes)
    assert totals["policy_decisions"] == 5 and totals["holdout_decisions"] == 2
    assert totals["uplift_per_decision"] == pytest.approx(60 / 5 - 5 / 2)
    assert totals["incremental"] == pytest.approx(5 * (12 - 2.5))
    assert totals["ci_low"] < totals["incremental"] < totals["ci_high"]
    # Day 1: 30 - 3 * 5; day 2 pools the holdout: 60 - 5 * 2.5.
    assert daily["cum_incremental"].tolist() == pytest.approx([15.0, 47.5])


def test_report_with_outcomes_puts_expected_and_realised_side_by_side(random_run):
    world, log, truth, _ = random_run
    outcomes = log.assign(
        decision_date=pd.to_datetime(log["decided_at"]).dt.date,
        reward=np.where(log["action"] == "no_offer", 1.0, 3.0),
        matured=pd.to_datetime(log["decided_at"]) < pd.Timestamp(START + timedelta(days=3)),
    )
    report = policy_regret(log, world, outcomes=outcomes)
    matured = outcomes[outcomes["matured"] & ~outcomes["holdout"]]
    assert report.realised["policy_decisions"] == len(matured)
    assert report.realised["expected_decisions"] == len(matured)
    inc = incremental_truth(truth, log)
    expected = sum(
        inc.at[d, a] for d, a in zip(matured["decision_id"], matured["action"], strict=True)
    )
    assert report.realised["expected_incremental"] == pytest.approx(expected)
    assert "Realised" in report.markdown()


def test_load_regret_report_reads_the_decision_log_and_the_saved_world(random_run, settings):
    world, log, _, report = random_run
    world.save(settings.sim_state_dir)
    rows = log.assign(
        decision_date=pd.to_datetime(log["decided_at"]).dt.date,
        trigger_event_id=[f"e-{d}" for d in log["decision_id"]],
        trigger_type="cart.abandoned",
        policy_version="p1",
        model_version=None,
        propensity=1 / 3,
        expected_rewards=None,
        explanation=None,
        fallback_reason=None,
    )
    with warehouse(settings.warehouse_path) as con:
        assert append_decisions(con, rows) == len(log)
    loaded = load_regret_report(settings)
    assert loaded.totals["decisions"] == report.totals["decisions"]
    assert loaded.totals["incremental"] == pytest.approx(report.totals["incremental"])
    assert loaded.realised is None  # no outcomes built in this warehouse


def test_load_regret_report_without_a_world_says_what_to_run(settings):
    with pytest.raises(FileNotFoundError, match="journey demo"):
        load_regret_report(settings)


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_are_written(random_run, tmp_path):
    world, log, _, _ = random_run
    outcomes = log.assign(
        decision_date=pd.to_datetime(log["decided_at"]).dt.date, reward=2.0, matured=True
    )
    report: RegretReport = policy_regret(
        log, world, outcomes=outcomes, compare={"same": log.set_index("decision_id")["action"]}
    )
    cumulative = plot_cumulative(report, tmp_path / "plots" / "cumulative.png")
    regret = plot_regret(report, tmp_path / "plots" / "regret.png")
    for path in (cumulative, regret):
        assert path.exists() and _is_png(path) and path.stat().st_size > 10_000


def test_oracle_calibration_compares_realised_rewards_with_the_oracle_per_group():
    decisions = pd.DataFrame(
        {
            "decision_id": [f"d{i}" for i in range(7)],
            "action": ["no_offer", "no_offer", "offer_a", "offer_a", "no_offer", "offer_a", "x"],
            "holdout": [False, False, False, False, True, False, False],
            "rule": ["bandit", "bandit", "bandit", "bandit", "holdout", "bandit", "bandit"],
            "margin_no_offer": [10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0],
            "margin_offer_a": [12.0, 12.0, 12.0, 14.0, 12.0, 12.0, 12.0],
            "margin_offer_b": [5.0] * 7,
        }
    )
    outcomes = pd.DataFrame(
        {
            "decision_id": [f"d{i}" for i in range(7)],
            "reward": [14.0, 16.0, 11.0, 15.0, 13.0, 99.0, 1.0],
            "matured": [True, True, True, True, True, False, True],
        }
    )
    table = oracle_calibration(decisions, outcomes)
    # Unmatured (d5) and unknown actions (d6) are left out; the holdout is its own group.
    assert table["decisions"].to_dict() == {
        "no_offer (bandit)": 2,
        "offer_a (bandit)": 2,
        "holdout": 1,
    }
    no_offer, offer_a = table.loc["no_offer (bandit)"], table.loc["offer_a (bandit)"]
    assert no_offer["realised"] == pytest.approx(15.0) and no_offer["oracle"] == 10.0
    assert no_offer["gap"] == pytest.approx(5.0)
    assert no_offer["se"] == pytest.approx(np.std([14.0, 16.0], ddof=1) / np.sqrt(2))
    assert no_offer["z"] == pytest.approx(5.0 / no_offer["se"])
    # The oracle value of each decision is that of the action it took: (12 + 14) / 2.
    assert offer_a["oracle"] == pytest.approx(13.0) and offer_a["gap"] == pytest.approx(0.0)
    assert table.loc["holdout", "gap"] == pytest.approx(3.0)
