"""Pure helpers that turn Dagster partition windows into dbt command lines for the feature marts.

No Dagster and no dbt import: the assets in :mod:`journey_pipeline.features.dbt_assets` call these,
and tests call them directly.

How partitions map to feature dates: a daily partition ``P`` holds the events of UTC day ``P``
(see :mod:`journey_pipeline.partitions`). Its feature row is the one whose cutoff is the end of
``P``, i.e. ``feature_date = P + 1 day``: once day ``P``'s events are in, the features served
during day ``P + 1`` can be built. A partition window ``[start, end)`` therefore builds the
feature dates ``start + 1 day .. end`` (inclusive), passed to dbt as the vars ``start_date`` and
``end_date``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

# dbt model names, shared by the asset selections and the tests.
FEATURE_MART = "contact_features_daily"
FEATURE_EXPORT = "contact_features_export"

# dbt var -> environment variable the ``feature_window`` macro falls back to.
FEATURE_WINDOW_ENV = {
    "start_date": "JOURNEY_FEATURE_START_DATE",
    "end_date": "JOURNEY_FEATURE_END_DATE",
}


def _as_date(value: dt.date | dt.datetime | str, name: str) -> dt.date:
    """Return ``value`` as a date; datetimes must be midnight (partition bounds always are)."""
    if isinstance(value, dt.datetime):
        if value.time() != dt.time(0, 0):
            raise ValueError(f"{name}={value.isoformat()} is not a day boundary (00:00)")
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an ISO date (YYYY-MM-DD)") from None


def feature_dates_for_partition_window(
    window_start: dt.date | dt.datetime | str, window_end: dt.date | dt.datetime | str
) -> tuple[dt.date, dt.date]:
    """Map a partition time window ``[window_start, window_end)`` of event days to the first
    and last feature date (inclusive) it builds: ``(window_start + 1 day, window_end)``.

    Raises ``ValueError`` when the window is empty or reversed.
    """
    start = _as_date(window_start, "window_start")
    end = _as_date(window_end, "window_end")
    if end <= start:
        raise ValueError(f"partition window [{start}, {end}) holds no day")
    return start + dt.timedelta(days=1), end


def feature_window_vars(
    first_feature_date: dt.date | str, last_feature_date: dt.date | str
) -> dict[str, str]:
    """dbt vars that make ``contact_features_daily`` rebuild exactly the feature dates
    ``first_feature_date .. last_feature_date`` (inclusive): ``{"start_date", "end_date"}``
    as ISO strings. Raises ``ValueError`` if the first date is after the last."""
    first = _as_date(first_feature_date, "first_feature_date")
    last = _as_date(last_feature_date, "last_feature_date")
    if first > last:
        raise ValueError(f"feature window {first} .. {last} is reversed")
    return {"start_date": first.isoformat(), "end_date": last.isoformat()}


def partition_window_vars(
    window_start: dt.date | dt.datetime | str, window_end: dt.date | dt.datetime | str
) -> dict[str, str]:
    """dbt vars for a Dagster partition window ``[window_start, window_end)`` (one partition or
    a single-run backfill of many): the feature dates ``window_start + 1 .. window_end``."""
    return feature_window_vars(*feature_dates_for_partition_window(window_start, window_end))


def feature_window_env(dbt_vars: Mapping[str, str]) -> dict[str, str]:
    """The environment variables that give dbt the feature window ``dbt_vars`` (the dict of
    :func:`partition_window_vars`): ``{JOURNEY_FEATURE_START_DATE, JOURNEY_FEATURE_END_DATE}``.

    Raises ``ValueError`` for a var that is not a window bound or a bound that is not an ISO
    date, so a typo never silently builds the default window."""
    unknown = set(dbt_vars) - set(FEATURE_WINDOW_ENV)
    if unknown:
        raise ValueError(f"not feature window vars: {sorted(unknown)}")
    return {
        FEATURE_WINDOW_ENV[name]: _as_date(value, name).isoformat()
        for name, value in dbt_vars.items()
    }


def dbt_build_args(
    dbt_vars: Mapping[str, str] | None = None,
    *,
    command: str = "build",
    full_refresh: bool = False,
    extra: Sequence[str] = (),
) -> list[str]:
    """The dbt CLI arguments (without the ``dbt`` executable and without the selection, which
    dagster-dbt adds from the asset selection): ``[command, ("--vars", json), ("--full-refresh"),
    *extra]``. Vars are serialised as compact, key-sorted JSON so the same window always gives
    the same command line."""
    if command not in ("build", "run", "test", "compile", "parse"):
        raise ValueError(f"unsupported dbt command {command!r}")
    args = [command]
    if dbt_vars:
        args += ["--vars", json.dumps(dict(dbt_vars), sort_keys=True, separators=(",", ":"))]
    if full_refresh:
        args.append("--full-refresh")
    args += list(extra)
    return args


def absolute_journey_paths(env: Mapping[str, str], cwd: Path) -> dict[str, str]:
    """The path variables dbt's profile reads (``JOURNEY_HOME``, default ``data``, and
    ``JOURNEY_WAREHOUSE_PATH`` when set), made absolute against ``cwd``.

    dagster-dbt starts dbt inside ``dbt_project/``; a relative home would otherwise point dbt at
    ``dbt_project/data`` instead of the caller's ``./data``. Returns only the variables whose value
    changes, so applying the result to ``env`` is idempotent.
    """
    updates: dict[str, str] = {}
    for name, default in (("JOURNEY_HOME", "data"), ("JOURNEY_WAREHOUSE_PATH", None)):
        value = env.get(name) or default
        if value is None:
            continue
        path = Path(value).expanduser()
        absolute = str(path if path.is_absolute() else (cwd / path))
        if env.get(name) != absolute:
            updates[name] = absolute
    return updates
