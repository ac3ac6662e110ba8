"""How the feature assets hand the partition window to dbt: environment variables (so the
command line, and with it dbt's partial parse, stays the same each day), restored afterwards."""

import os

import pytest

from journey_pipeline.features.dbt_args import (
    FEATURE_WINDOW_ENV,
    feature_window_env,
    partition_window_vars,
)
from journey_pipeline.features.dbt_assets import environment


def test_a_partition_window_becomes_the_macros_environment_variables():
    dbt_vars = partition_window_vars("2026-01-04", "2026-01-06")
    assert feature_window_env(dbt_vars) == {
        "JOURNEY_FEATURE_START_DATE": "2026-01-05",
        "JOURNEY_FEATURE_END_DATE": "2026-01-06",
    }
    assert set(FEATURE_WINDOW_ENV) == set(dbt_vars)


def test_bad_window_vars_are_refused():
    with pytest.raises(ValueError, match="not feature window vars"):
        feature_window_env({"start": "2026-01-05"})
    with pytest.raises(ValueError, match="not an ISO date"):
        feature_window_env({"start_date": "05/01/2026"})


def test_the_window_is_set_only_for_the_block(monkeypatch):
    monkeypatch.setenv("JOURNEY_FEATURE_START_DATE", "2000-01-01")
    monkeypatch.delenv("JOURNEY_FEATURE_END_DATE", raising=False)
    with environment(feature_window_env({"start_date": "2026-01-05", "end_date": "2026-01-06"})):
        assert os.environ["JOURNEY_FEATURE_START_DATE"] == "2026-01-05"
        assert os.environ["JOURNEY_FEATURE_END_DATE"] == "2026-01-06"
    assert os.environ["JOURNEY_FEATURE_START_DATE"] == "2000-01-01"
    assert "JOURNEY_FEATURE_END_DATE" not in os.environ
