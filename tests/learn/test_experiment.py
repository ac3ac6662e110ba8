"""Experiment analysis of the policy against the persistent holdout, and the Qini curve."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from journey_pipeline.learn.experiment import (
    analyse,
    plot_daily_lift,
    plot_qini,
    qini_curve,
    uplift_scores,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STAGES = ["lead", "customer"]


def decisions_frame(seed=0, n_contacts=3000, holdout_share=0.2, lead_effect=6.0, days=10):
    """Contacts decided once a day or so; the policy helps leads and does nothing for customers."""
    rng = np.random.default_rng(seed)
    contacts = pd.DataFrame(
        {
            "contact_id": [f"C{i}" for i in range(n_contacts)],
            "holdout": rng.random(n_contacts) < holdout_share,
            "lifecycle_stage": rng.choice(STAGES, n_contacts),
        }
    )
    rows = contacts.loc[contacts.index.repeat(2)].reset_index(drop=True)
    rows["decision_id"] = [f"D{i}" for i in range(len(rows))]
    rows["decided_at"] = (
        pd.Timestamp("2026-01-01")
        + pd.to_timedelta(rng.integers(0, days, len(rows)), unit="D")
        + pd.to_timedelta(rng.integers(0, 86_400, len(rows)), unit="s")
    )
    rows["action"] = np.where(
        rows["holdout"], "no_offer", rng.choice(["offer_a", "offer_b"], len(rows))
    )
    rows["propensity"] = np.where(rows["holdout"], 1.0, 0.5)
    base = rng.random(len(rows)) < 0.2
    revenue = base * rng.lognormal(3.0, 0.5, len(rows))
    lift = np.where((~rows["holdout"]) & (rows["lifecycle_stage"] == "lead"), lead_effect, 0.0)
    rows["revenue"] = revenue + lift
    rows["reward"] = rows["revenue"] - np.where(rows["action"] == "offer_b", 5.0, 0.0)
    rows["converted"] = rows["revenue"] > 0
    return rows


def test_overall_lift_is_per_contact_and_matches_a_direct_computation():
    frame = decisions_frame()
    result = analyse(frame)
    per_contact = frame.groupby(["contact_id", "holdout"])["reward"].sum().reset_index()
    expected = (
        per_contact.loc[~per_contact["holdout"], "reward"].mean()
        - per_contact.loc[per_contact["holdout"], "reward"].mean()
    )
    row = result.overall("margin_per_user")
    assert row["lift"] == pytest.approx(expected)
    assert row["n_policy"] + row["n_holdout"] == 3000
    assert row["cs_low"] < row["fixed_low"] <= row["lift"] <= row["fixed_high"] < row["cs_high"]
    assert row["status"] == "ok"
    revenue = result.overall("revenue_per_user")
    assert revenue["significant"]  # two decisions of +6 for half the policy's contacts
    conversion = result.overall("conversion")
    assert 0 <= conversion["holdout_mean"] <= 1
    assert conversion["relative_lift"] == pytest.approx(
        conversion["lift"] / conversion["holdout_mean"]
    )


def test_cohorts_separate_where_the_policy_helps_from_where_it_does_not():
    result = analyse(decisions_frame(seed=1, n_contacts=6000))
    cohorts = result.summary[
        (result.summary["segment_type"] == "cohort")
        & (result.summary["metric"] == "revenue_per_user")
    ].set_index("segment")
    assert set(cohorts.index) == set(STAGES)
    assert cohorts.loc["lead", "cs_low"] > 0  # +12 per lead contact
    assert cohorts.loc["customer", "cs_low"] < 0 < cohorts.loc["customer", "cs_high"]
    arms = result.summary[result.summary["segment_type"] == "action"]
    assert set(arms["segment"]) == {"offer_a", "offer_b"}


def test_intended_action_restricts_the_holdout_side_of_an_arm():
    frame = decisions_frame(seed=2)
    contact_number = frame["contact_id"].str[1:].astype(int)
    frame["intended_action"] = np.where(contact_number % 2 == 0, "offer_a", "offer_b")
    result = analyse(frame, min_group_size=2)
    arm = result.summary[
        (result.summary["segment_type"] == "action")
        & (result.summary["segment"] == "offer_a")
        & (result.summary["metric"] == "margin_per_user")
    ].iloc[0]
    holdout_a = frame[frame["holdout"] & (frame["intended_action"] == "offer_a")]
    assert arm["n_holdout"] == holdout_a["contact_id"].nunique()
    assert arm["n_holdout"] < result.overall()["n_holdout"]


def test_days_without_outcomes_are_explicit_no_data_rows():
    frame = decisions_frame(days=3)
    frame = frame[frame["decided_at"].dt.day != 2]  # nothing decided on 2 January
    result = analyse(frame, start_date="2026-01-01", end_date="2026-01-05")
    daily = result.daily.set_index("date")
    assert len(daily) == 5
    for day in (2, 4, 5):
        row = daily.loc[pd.Timestamp(f"2026-01-0{day}").date()]
        assert row["status"] == "no data"
        assert row["decisions_policy"] == 0 and row["decisions_holdout"] == 0
    assert daily.iloc[0]["status"] == "ok"
    # The cumulative path on a no-data day is the one of the day before.
    assert daily.iloc[1]["lift"] == daily.iloc[0]["lift"]
    assert daily.iloc[2]["cum_users_policy"] > daily.iloc[0]["cum_users_policy"]


def test_no_holdout_no_data_and_immature_rows_never_divide_by_zero():
    frame = decisions_frame(n_contacts=300)
    no_holdout = analyse(frame[~frame["holdout"]])
    assert set(no_holdout.summary["status"]) == {"no data"}
    assert no_holdout.summary["lift"].isna().all()
    assert not no_holdout.summary["significant"].any()

    empty = analyse(frame.iloc[0:0], start_date="2026-01-01", end_date="2026-01-02")
    assert set(empty.daily["status"]) == {"no data"}
    assert empty.overall()["status"] == "no data"

    frame = frame.assign(matured=frame["decided_at"].dt.day < 5)
    frame.loc[frame.index[:3], "reward"] = np.nan
    result = analyse(frame)
    assert result.excluded["immature"] == int((~frame["matured"]).sum())
    assert result.excluded["missing_reward"] == int(
        frame.loc[frame["matured"], "reward"].isna().sum()
    )

    small = analyse(frame.head(40))
    assert set(small.summary["status"]) <= {"insufficient data", "no data"}
    with pytest.raises(ValueError, match="lacks columns"):
        analyse(frame.drop(columns=["propensity"]))


def test_markdown_and_png_outputs(tmp_path):
    result = analyse(decisions_frame(n_contacts=600), min_group_size=10)
    markdown = result.to_markdown()
    assert "| segment_type " in markdown and "margin_per_user" in markdown
    assert "| date " in markdown
    png = plot_daily_lift(result, tmp_path / "plots" / "lift.png")
    assert png.startswith(PNG_MAGIC)
    assert (tmp_path / "plots" / "lift.png").read_bytes() == png


def test_qini_curve_rewards_scores_that_rank_uplift():
    rng = np.random.default_rng(4)
    n = 4000
    uplift = rng.uniform(0, 1, n)  # the true effect of treating each unit
    treated = rng.random(n) < 0.5
    outcome = rng.normal(0, 0.5, n) + treated * uplift
    good = qini_curve(uplift, treated, outcome)
    bad = qini_curve(-uplift, treated, outcome)
    noise = qini_curve(rng.random(n), treated, outcome)
    assert good.coefficient > noise.coefficient > bad.coefficient
    assert good.coefficient > 0 > bad.coefficient
    # Both curves end at the same total incremental outcome.
    assert good.curve["qini"].iloc[-1] == pytest.approx(bad.curve["qini"].iloc[-1])
    assert plot_qini(good).startswith(PNG_MAGIC)
    assert "fraction |" in good.to_markdown()


def test_qini_hand_computed_points_and_bad_input():
    # Ranked: T(3), C(1), T(0), C(2)
    curve = qini_curve([4, 3, 2, 1], [True, False, True, False], [3.0, 1.0, 0.0, 2.0]).curve
    # k=1: 3 - 0; k=2: 3 - 1*1/1; k=3: 3 - 1*2/1; k=4: 3 - 3*2/2
    assert curve["qini"].tolist() == pytest.approx([0.0, 3.0, 2.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="both treated and control"):
        qini_curve([1, 2], [True, True], [1.0, 0.0])
    with pytest.raises(ValueError, match="same length"):
        qini_curve([1, 2], [True], [1.0, 0.0])


def test_uplift_scores_from_logged_expected_rewards():
    logged = pd.Series(
        [
            '{"no_offer": 1.0, "offer_a": 2.5, "offer_b": 0.5}',
            {"no_offer": 2.0, "offer_a": 1.0},
            "{}",
        ]
    )
    scores = uplift_scores(logged)
    assert scores.iloc[:2].tolist() == [1.5, -1.0]
    assert np.isnan(scores.iloc[2])


def test_plot_daily_lift_draws_days_without_data_as_gaps(tmp_path):
    import pandas as pd

    from journey_pipeline.learn.experiment import ExperimentAnalysis, plot_daily_lift

    daily = pd.DataFrame(
        {
            "date": pd.to_datetime(["2026-01-01", "2026-01-02"]),
            "lift": [None, 0.5],
            "cs_low": [None, -1.0],
            "cs_high": [None, 2.0],
            "fixed_low": [None, 0.1],
            "fixed_high": [None, 0.9],
        },
        dtype=object,
    )
    analysis = ExperimentAnalysis(summary=pd.DataFrame(), daily=daily, excluded={}, alpha=0.05)
    png = plot_daily_lift(analysis, tmp_path / "lift.png")
    assert png.startswith(b"\x89PNG") and (tmp_path / "lift.png").stat().st_size == len(png)
