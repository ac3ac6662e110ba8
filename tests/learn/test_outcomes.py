"""Outcome attribution in SQL on a small, hand-made DuckDB warehouse."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from journey_pipeline.learn.outcomes import build_outcomes, load_outcomes
from journey_pipeline.warehouse import ensure_core_schema, warehouse

# The decision log contract (owned by the decide stage); created here so these tests only
# depend on the shared column list.
DECISION_LOG_DDL = """
CREATE SCHEMA IF NOT EXISTS decide;
CREATE TABLE IF NOT EXISTS decide.decision_log (
    decision_id VARCHAR PRIMARY KEY, contact_id VARCHAR, decided_at TIMESTAMP,
    decision_date DATE, trigger_event_id VARCHAR, trigger_type VARCHAR,
    policy_version VARCHAR, model_version VARCHAR, mode VARCHAR, action VARCHAR,
    propensity DOUBLE, holdout BOOLEAN, expected_rewards JSON, explanation JSON,
    rules_applied JSON, fallback_reason VARCHAR
);
"""

T0 = dt.datetime(2026, 1, 5, 10, 0, 0)


def add_decision(
    con, decision_id, contact_id, decided_at, action, *, holdout=False, mode="live", rules=()
):
    con.execute(
        "INSERT INTO decide.decision_log VALUES (?, ?, ?, ?, ?, 'cart.abandoned', 'p1', 'm1', ?,"
        " ?, 0.5, ?, ?, '[]', ?, ?)",
        [
            decision_id,
            contact_id,
            decided_at,
            decided_at.date(),
            f"trigger-{decision_id}",
            mode,
            action,
            holdout,
            json.dumps({"no_offer": 1.0, "offer_a": 2.0, "offer_b": 3.0}),
            json.dumps(list(rules)),
            "no_features" if "fallback" in rules else None,
        ],
    )


def add_event(con, event_id, event_type, occurred_at, contact_id, **columns):
    con.execute(
        "INSERT INTO raw.events (event_id, occurred_at, event_date, event_type, source,"
        " contact_id, lifecycle_stage, amount, order_id, decision_id, batch_id, ingested_at)"
        " VALUES (?, ?, ?, ?, 'test', ?, ?, ?, ?, ?, 'b1', ?)",
        [
            event_id,
            occurred_at,
            occurred_at.date(),
            event_type,
            contact_id,
            columns.get("lifecycle_stage"),
            columns.get("amount"),
            columns.get("order_id"),
            columns.get("decision_id"),
            occurred_at,
        ],
    )


@pytest.fixture
def con(tmp_path):
    with warehouse(tmp_path / "warehouse.duckdb") as connection:
        ensure_core_schema(connection)
        connection.execute(DECISION_LOG_DDL)
        populate(connection)
        yield connection


def populate(con):
    day = dt.timedelta(days=1)
    add_decision(con, "D1", "C1", T0, "offer_b")
    add_decision(con, "D2", "C2", T0, "no_offer", holdout=True)
    add_decision(con, "D3", "C3", T0, "offer_a", mode="shadow")
    add_decision(con, "D4", "C4", T0 + day, "offer_a")
    # C1's stage changes before and after the decision: the cohort is the one at decided_at.
    add_event(con, "s1", "contact.updated", T0 - 4 * day, "C1", lifecycle_stage="lead")
    add_event(
        con,
        "s2",
        "contact.updated",
        T0 - dt.timedelta(hours=1),
        "C1",
        lifecycle_stage="opportunity",
    )
    add_event(
        con, "s3", "contact.updated", T0 + dt.timedelta(hours=1), "C1", lifecycle_stage="customer"
    )
    # C1 payments: at the decision instant (out), +1d (in), replayed order (once),
    # exactly +7d (in, the window is closed on the right), one second later (out).
    add_event(con, "p0", "payment.succeeded", T0, "C1", amount=11.0, order_id="o0")
    add_event(con, "p1", "payment.succeeded", T0 + day, "C1", amount=30.0, order_id="o1")
    add_event(
        con,
        "p1-replay",
        "payment.succeeded",
        T0 + day + dt.timedelta(minutes=5),
        "C1",
        amount=30.0,
        order_id="o1",
    )
    add_event(con, "p2", "payment.succeeded", T0 + 7 * day, "C1", amount=20.0, order_id="o2")
    add_event(
        con,
        "p3",
        "payment.succeeded",
        T0 + 7 * day + dt.timedelta(seconds=1),
        "C1",
        amount=99.0,
        order_id="o3",
    )
    add_event(con, "p4", "payment.succeeded", T0 + 2 * day, "C2", amount=50.0, order_id="o4")
    add_event(con, "p5", "payment.succeeded", T0 + 2 * day, "C5", amount=15.0, order_id="o5")
    # Offer events: credited, after the window, unknown id, missing id, shadow decision.
    add_event(con, "e1", "offer.delivered", T0 + dt.timedelta(minutes=1), "C1", decision_id="D1")
    add_event(con, "e2", "offer.opened", T0 + dt.timedelta(hours=2), "C1", decision_id="D1")
    add_event(con, "e3", "offer.clicked", T0 + 7.5 * day, "C1", decision_id="D1")
    add_event(con, "e4", "offer.opened", T0 + day, "C9", decision_id="D-unknown")
    add_event(con, "e5", "offer.opened", T0 + day, "C9")
    add_event(con, "e6", "offer.delivered", T0 + dt.timedelta(minutes=1), "C3", decision_id="D3")


def by_id(frame):
    return frame.set_index("decision_id")


def test_attribution_window_edges_costs_and_cohort(con):
    report = build_outcomes(con, "2026-01-05", "2026-01-06", window_days=7)
    outcomes = by_id(load_outcomes(con))
    assert sorted(outcomes.index) == ["D1", "D2", "D4"]  # the shadow decision has no outcome
    d1 = outcomes.loc["D1"]
    assert d1["revenue"] == pytest.approx(50.0)  # 30 (once) + 20 at exactly +7 days
    assert d1["payments"] == 2
    assert d1["reward"] == pytest.approx(45.0)  # offer_b costs 5
    assert bool(d1["converted"]) and bool(d1["delivered"]) and bool(d1["opened"])
    assert not bool(d1["clicked"])  # the click came after the window
    assert d1["lifecycle_stage"] == "opportunity"
    assert d1["expected_reward"] == pytest.approx(3.0)
    d2 = outcomes.loc["D2"]
    assert (d2["revenue"], d2["reward"], d2["fixed_cost"]) == (50.0, 50.0, 0.0)
    d4 = outcomes.loc["D4"]
    assert d4["revenue"] == 0.0 and not bool(d4["converted"]) and d4["reward"] == 0.0
    # as_of defaults to the latest event (T0 + 7.5d): D1's window closed, D4's not yet.
    assert bool(d1["matured"]) and not bool(d4["matured"])
    assert (report.decisions, report.matured, report.immature) == (3, 2, 1)
    assert report.revenue == pytest.approx(100.0)
    assert report.reward == pytest.approx(95.0)


def test_a_later_decision_ends_the_window_and_takes_the_payments_after_it(con):
    """Last touch: each payment is credited to one decision, the contact's latest live one
    before it. Offer events name their decision and stay with it; a shadow decision ends
    nothing; the shortened window matures no sooner."""
    day = dt.timedelta(days=1)
    add_decision(con, "D8", "C1", T0 + 3 * day, "no_offer", rules=["frequency_cap"])
    add_decision(con, "D9", "C1", T0 + 2 * day, "offer_a", mode="shadow")
    add_event(con, "p6", "payment.succeeded", T0 + 3 * day, "C1", amount=8.0, order_id="o6")
    add_event(con, "e7", "offer.opened", T0 + 4 * day, "C1", decision_id="D1")
    build_outcomes(con, "2026-01-05", "2026-01-08", window_days=7, as_of=T0 + 9 * day)
    outcomes = by_id(load_outcomes(con))
    d1, d8 = outcomes.loc["D1"], outcomes.loc["D8"]
    assert d1["window_end"] == T0 + 3 * day
    # 30 (+1 d) and 8 at the very instant of D8 (not caused by D8): D1's; 20 and 99 after
    # seven days: D8's.
    assert (d1["revenue"], d1["payments"]) == (38.0, 2)
    assert (d8["revenue"], d8["payments"]) == (119.0, 2)
    assert bool(d1["opened"])
    assert bool(d1["matured"]) and not bool(d8["matured"])
    assert "D9" not in outcomes.index


def test_uncreditable_offer_events_are_counted_and_kept(con):
    report = build_outcomes(con, "2026-01-05", "2026-01-06")
    assert report.unmatched_by_reason == {
        "after_window": 1,
        "unknown_decision": 1,
        "missing_decision_id": 1,
        "not_live_decision": 1,
    }
    assert report.unknown_decision_events == 2
    assert report.outside_window_events == 1
    assert set(report.unmatched["event_id"]) == {"e3", "e4", "e5", "e6"}
    stored = con.execute("SELECT count(*) FROM learn.unmatched_outcome_events").fetchone()[0]
    assert stored == 4
    # Of the payments dated in the range, only the one at D1's very instant is in no window.
    assert report.unattributed_payments == 1
    # Over a range that also covers C5's organic order and C1's late one, all three count.
    assert build_outcomes(con, "2026-01-05", "2026-01-12").unattributed_payments == 3
    # Rebuilding the same range replaces rather than duplicates.
    again = build_outcomes(con, "2026-01-05", "2026-01-06")
    assert again.unmatched_by_reason == report.unmatched_by_reason
    assert con.execute("SELECT count(*) FROM learn.unmatched_outcome_events").fetchone()[0] == 4


def test_late_outcome_updates_an_earlier_day_only_when_rebuilt(con):
    build_outcomes(con, "2026-01-05", "2026-01-05")
    build_outcomes(con, "2026-01-06", "2026-01-06")
    before = by_id(load_outcomes(con))
    assert before.loc["D2", "revenue"] == 50.0
    # A payment of C2 inside D2's window arrives late (ingested after the first build).
    add_event(
        con,
        "p-late",
        "payment.succeeded",
        T0 + 3 * dt.timedelta(days=1),
        "C2",
        amount=25.0,
        order_id="o-late",
    )
    assert by_id(load_outcomes(con)).loc["D2", "revenue"] == 50.0
    report = build_outcomes(con, "2026-01-05", "2026-01-05")
    after = by_id(load_outcomes(con))
    assert after.loc["D2", "revenue"] == 75.0
    assert report.decisions == 2
    # The other day's partition is untouched by rebuilding this one.
    assert after.loc["D4", "built_at"] == before.loc["D4", "built_at"]
    assert len(after) == 3


def test_window_length_is_configurable_and_as_of_decides_maturity(con):
    build_outcomes(con, "2026-01-05", "2026-01-06", window_days=1, as_of=T0 + dt.timedelta(days=30))
    outcomes = by_id(load_outcomes(con))
    assert outcomes.loc["D1", "revenue"] == 30.0  # only the +1 day order is inside one day
    assert outcomes.loc["D2", "revenue"] == 0.0
    assert outcomes["matured"].all()


def test_bad_arguments_and_missing_tables(con, tmp_path):
    with pytest.raises(ValueError, match="before start_date"):
        build_outcomes(con, "2026-01-06", "2026-01-05")
    with pytest.raises(ValueError, match="window_days"):
        build_outcomes(con, "2026-01-05", "2026-01-06", window_days=0)
    with warehouse(tmp_path / "empty.duckdb") as empty, pytest.raises(LookupError, match="decide"):
        build_outcomes(empty, "2026-01-05", "2026-01-06")


def test_built_outcomes_feed_the_experiment_analysis(con):
    from journey_pipeline.learn.experiment import analyse

    build_outcomes(con, "2026-01-05", "2026-01-06", as_of=T0 + dt.timedelta(days=30))
    result = analyse(load_outcomes(con), min_group_size=1)
    margin = result.overall("margin_per_user")
    # Policy users C1 (45) and C4 (0) against holdout user C2 (50).
    assert (margin["n_policy"], margin["n_holdout"]) == (2, 1)
    assert margin["lift"] == pytest.approx(22.5 - 50.0)
    assert result.overall("conversion")["policy_mean"] == pytest.approx(0.5)
    assert set(result.summary.loc[result.summary["segment_type"] == "cohort", "segment"]) == {
        "opportunity"
    }


def test_the_reward_models_learn_from_live_matured_decisions_of_the_policy(con):
    from journey_pipeline.decide.scoring import labelled_decisions

    add_decision(con, "D5", "C1", T0 + dt.timedelta(days=2), "no_offer", rules=["frequency_cap"])
    add_decision(con, "D7", "C7", T0, "no_offer", rules=["fallback"])
    build_outcomes(con, "2026-01-05", "2026-01-07", as_of=T0 + dt.timedelta(days=30))
    labelled = labelled_decisions(con)
    # Not the holdout (D2), not a shadow (D3), not a fallback (D7); a rule-forced one (D5) stays.
    assert labelled["decision_id"].tolist() == ["D1", "D4", "D5"]
    # C1's next decision (D5, two days later) takes the payments after it.
    assert labelled.loc[0, "reward"] == pytest.approx(25.0)
    assert labelled.loc[2, "reward"] == pytest.approx(119.0)
