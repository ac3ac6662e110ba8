"""The pure helpers that turn partition windows into dbt command lines."""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import pytest

from journey_pipeline.features.dbt_args import (
    absolute_journey_paths,
    dbt_build_args,
    feature_dates_for_partition_window,
    feature_window_vars,
    partition_window_vars,
)
from journey_pipeline.partitions import daily_partitions


def test_one_partition_builds_the_feature_date_after_its_event_day() -> None:
    window = daily_partitions.time_window_for_partition_key("2026-02-28")
    assert feature_dates_for_partition_window(window.start, window.end) == (
        dt.date(2026, 3, 1),
        dt.date(2026, 3, 1),
    )
    assert partition_window_vars(window.start, window.end) == {
        "start_date": "2026-03-01",
        "end_date": "2026-03-01",
    }


def test_a_backfill_range_builds_one_feature_date_per_partition() -> None:
    keys = daily_partitions.get_partition_keys_in_range(
        dg.PartitionKeyRange("2026-01-30", "2026-02-01")
    )
    first = daily_partitions.time_window_for_partition_key(keys[0])
    last = daily_partitions.time_window_for_partition_key(keys[-1])
    start, end = feature_dates_for_partition_window(first.start, last.end)
    assert (end - start).days + 1 == len(keys) == 3
    assert (start, end) == (dt.date(2026, 1, 31), dt.date(2026, 2, 2))


def test_window_bounds_accept_dates_datetimes_and_iso_strings() -> None:
    midnight = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    assert feature_dates_for_partition_window(midnight, "2026-01-07") == (
        dt.date(2026, 1, 6),
        dt.date(2026, 1, 7),
    )
    assert feature_window_vars("2026-01-05", dt.date(2026, 1, 5)) == {
        "start_date": "2026-01-05",
        "end_date": "2026-01-05",
    }


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("2026-01-05", "2026-01-05", "holds no day"),
        ("2026-01-06", "2026-01-05", "holds no day"),
        (dt.datetime(2026, 1, 5, 12), "2026-01-06", "not a day boundary"),
        ("05/01/2026", "2026-01-06", "not an ISO date"),
    ],
)
def test_bad_partition_windows_are_refused(start, end, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        feature_dates_for_partition_window(start, end)


def test_reversed_feature_window_is_refused() -> None:
    with pytest.raises(ValueError, match="reversed"):
        feature_window_vars("2026-01-06", "2026-01-05")


def test_build_args_carry_vars_as_stable_json() -> None:
    args = dbt_build_args({"end_date": "2026-01-07", "start_date": "2026-01-06"})
    assert args[:2] == ["build", "--vars"]
    assert args[2] == '{"end_date":"2026-01-07","start_date":"2026-01-06"}'
    assert json.loads(args[2]) == {"start_date": "2026-01-06", "end_date": "2026-01-07"}
    assert dbt_build_args() == ["build"]
    assert dbt_build_args(command="run", full_refresh=True, extra=["--fail-fast"]) == [
        "run",
        "--full-refresh",
        "--fail-fast",
    ]
    with pytest.raises(ValueError, match="unsupported dbt command"):
        dbt_build_args(command="seed; rm -rf /")


def test_journey_paths_are_made_absolute_for_dbt(tmp_path) -> None:
    assert absolute_journey_paths({}, tmp_path) == {"JOURNEY_HOME": str(tmp_path / "data")}
    env = {"JOURNEY_HOME": "homes/a", "JOURNEY_WAREHOUSE_PATH": "w.duckdb"}
    updates = absolute_journey_paths(env, tmp_path)
    assert updates == {
        "JOURNEY_HOME": str(tmp_path / "homes" / "a"),
        "JOURNEY_WAREHOUSE_PATH": str(tmp_path / "w.duckdb"),
    }
    assert absolute_journey_paths({**env, **updates}, tmp_path / "elsewhere") == {}
