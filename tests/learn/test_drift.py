"""Evidently drift between a reference and a current window of features and predictions."""

from __future__ import annotations

import json
from datetime import date

import numpy as np
import pandas as pd
import pytest

from journey_pipeline.learn.analysis import drift_onset
from journey_pipeline.learn.drift import chosen_action_expected_reward, drift_report


def window(rng, n, *, spend_shift=0.0, stage_probs=(0.5, 0.3, 0.2), reward_shift=0.0):
    return pd.DataFrame(
        {
            "spend_30d": rng.gamma(2.0, 20.0, n) + spend_shift,
            "product_views_7d": rng.poisson(3, n),
            "lifecycle_stage": rng.choice(["lead", "customer", "churned"], n, p=stage_probs),
            "offer_open_rate_30d": np.full(n, np.nan),  # nobody received an offer yet
            "expected_reward": rng.normal(4.0, 1.0, n) + reward_shift,
        }
    )


COLUMNS = ["spend_30d", "product_views_7d", "lifecycle_stage", "offer_open_rate_30d"]


@pytest.mark.parametrize("n", [300, 2000])  # p-value tests on small samples, distances on large
def test_shifted_column_drifts_and_unshifted_ones_do_not(n, tmp_path):
    rng = np.random.default_rng(n)
    reference = window(rng, n)
    current = window(rng, n, spend_shift=40.0)
    html = tmp_path / "reports" / "drift.html"
    result = drift_report(reference, current, COLUMNS, html, prediction_column="expected_reward")
    assert result.drifted_columns == ["spend_30d"]
    assert set(result.per_column) == {
        "spend_30d",
        "product_views_7d",
        "lifecycle_stage",
        "expected_reward",
    }
    assert result.skipped_columns == {"offer_open_rate_30d": "all values null in a window"}
    assert result.drift_share == pytest.approx(1 / 4)
    assert result.prediction_drifted is False
    assert result.html_path == html and "<html" in html.read_text()[:2000].lower()
    assert "spend_30d" in result.scores_markdown()


def test_prediction_and_categorical_drift_are_detected(tmp_path):
    rng = np.random.default_rng(1)
    reference = window(rng, 1000)
    current = window(rng, 1000, stage_probs=(0.1, 0.3, 0.6), reward_shift=2.0)
    result = drift_report(reference, current, COLUMNS, None, prediction_column="expected_reward")
    assert set(result.drifted_columns) == {"lifecycle_stage", "expected_reward"}
    assert result.prediction_drifted is True
    assert result.html_path is None
    assert result.as_metadata()["drift_share"] == pytest.approx(2 / 4)


def test_empty_or_small_windows_are_skipped_with_a_reason(tmp_path):
    rng = np.random.default_rng(2)
    reference = window(rng, 500)
    empty = reference.iloc[0:0]
    result = drift_report(reference, empty, COLUMNS, tmp_path / "r.html")
    assert result.skipped and result.drift_share is None
    assert "current 0" in result.skipped_reason
    assert not (tmp_path / "r.html").exists()
    small = drift_report(reference.head(10), reference, COLUMNS, None)
    assert "reference 10" in small.skipped_reason
    all_null = drift_report(reference, reference, ["offer_open_rate_30d", "not_a_column"], None)
    assert all_null.skipped_reason == "no column has values in both windows"
    assert all_null.skipped_columns["not_a_column"] == "missing from a window"


def test_expected_reward_of_the_chosen_action():
    blobs = pd.Series([json.dumps({"no_offer": 1.0, "offer_a": 2.5}), {"offer_b": 3.0}, "{}"])
    actions = pd.Series(["offer_a", "offer_b", "offer_a"])
    values = chosen_action_expected_reward(blobs, actions)
    assert values.iloc[:2].tolist() == [2.5, 3.0]
    assert np.isnan(values.iloc[2])


def test_the_drift_onset_is_the_first_day_of_the_latest_episode():
    def history(*shares):
        days = pd.date_range("2026-02-01", periods=len(shares)).date.astype(str)
        return pd.DataFrame({"current_window": days, "drift_share": list(shares)})

    assert drift_onset(history(0.0, 0.1, 0.2)) is None
    assert drift_onset(history()) is None
    # Skipped checks (no share) neither start nor end an episode.
    assert drift_onset(history(0.0, 0.5, None, 0.6)) == date(2026, 2, 2)
    # An episode that ended still marks the regime; a later one replaces it.
    assert drift_onset(history(0.4, 0.6, 0.1, 0.0)) == date(2026, 2, 1)
    assert drift_onset(history(0.4, 0.1, 0.35, 0.5)) == date(2026, 2, 3)
    assert drift_onset(history(0.0, 0.25, 0.3), threshold=0.2) == date(2026, 2, 2)
    # A re-run of a day (its row appended again) counts once, with its latest share.
    rerun = pd.concat([history(0.0, 0.5), history(0.0, 0.1)], ignore_index=True)
    assert drift_onset(rerun) is None
