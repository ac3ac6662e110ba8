"""Dagster assets of the dbt feature marts (group ``features``).

- ``feature_assets``: every model, partitioned by day
  (:data:`journey_pipeline.partitions.daily_partitions`); a partition window or a backfill runs
  as one ``dbt build`` that rebuilds exactly its feature dates of the incremental mart
  ``contact_features_daily`` (see :mod:`.dbt_args` for the mapping), the views before it and
  the Parquet export after it.

dbt tests become asset checks; those of severity ``error`` (all of this project's) are blocking,
so a failing test stops downstream assets instead of serving bad features. The dbt source
``raw.events`` maps to the observe stage's asset ``raw_events`` (source meta in
``dbt_project/models/staging/_sources.yml``), so the UI draws observe -> dbt models.

The dbt subprocess opens the DuckDB warehouse file itself: a caller in the same process must
not hold a connection to it while these assets run (DuckDB allows one writing process per file).
"""

import gc
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DbtCliResource, DbtProject, dbt_assets

from journey_pipeline.features.dbt_args import (
    FEATURE_MART,
    absolute_journey_paths,
    dbt_build_args,
    partition_window_vars,
)
from journey_pipeline.partitions import daily_partitions

DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt_project"


def dbt_executable() -> str:
    """The ``dbt`` of this interpreter's environment (a virtualenv need not be on PATH),
    else whatever ``dbt`` is on PATH."""
    beside_python = Path(sys.executable).with_name("dbt")
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("dbt") or "dbt"


def manifest_is_stale(project: DbtProject) -> bool:
    """True when ``project``'s manifest is missing or older than any of its source files
    (models, macros, tests, project and profile YAML)."""
    manifest = project.manifest_path
    if not manifest.exists():
        return True
    built_at = manifest.stat().st_mtime
    sources = [
        path
        for folder in ("models", "macros", "tests")
        for path in (project.project_dir / folder).rglob("*")
        if path.suffix in (".sql", ".yml", ".yaml")
    ]
    sources += [project.project_dir / "dbt_project.yml", project.profiles_dir / "profiles.yml"]
    return any(path.exists() and path.stat().st_mtime > built_at for path in sources)


def ensure_dbt_manifest(project: DbtProject | None = None, *, force: bool = False) -> Path:
    """Make sure ``project``'s ``target/manifest.json`` exists and is current, running
    ``dbt parse`` when it is missing (a fresh clone), older than the project's files, or when
    ``force`` is set; returns the manifest path.

    ``dbt parse`` reads the profile but opens no database, so this works before any data exists.
    ``project`` defaults to this package's :data:`journey_dbt_project`.
    """
    project = project or journey_dbt_project
    if force or manifest_is_stale(project):
        (
            DbtCliResource(project_dir=project, dbt_executable=dbt_executable())
            .cli(["parse", "--quiet"], target_path=project.target_path)
            .wait()
        )
    return project.manifest_path


journey_dbt_project = DbtProject(
    project_dir=DBT_PROJECT_DIR,
    profiles_dir=DBT_PROJECT_DIR,
    # No fixed target: the profile picks JOURNEY_DBT_TARGET (default local) when dbt runs.
    target=None,
)
# Under `dagster dev` dagster-dbt re-parses on start with the `dbt` on PATH; where the
# environment's dbt is not on PATH (a virtualenv that is not activated), ensure_dbt_manifest
# below does the same with it whenever the manifest is stale.
if shutil.which("dbt"):
    journey_dbt_project.prepare_if_dev()
# The decorators below read the manifest when this module is imported.
ensure_dbt_manifest()


def dbt_resource(target: str | None = None) -> DbtCliResource:
    """The ``dbt`` resource the feature assets need: the project's CLI on ``target``
    (``local`` DuckDB when None; ``postgres`` for the production profile)."""
    return DbtCliResource(
        project_dir=journey_dbt_project, target=target, dbt_executable=dbt_executable()
    )


def prepare_dbt_environment() -> Path:
    """Pin the profile's paths for the dbt subprocess and create the export folder; returns
    the ``JOURNEY_HOME`` dbt will use.

    JOURNEY_HOME (and JOURNEY_WAREHOUSE_PATH) are made absolute in this process's environment,
    because dbt runs inside ``dbt_project/``; and dbt-duckdb's external materialization writes
    into ``JOURNEY_HOME/features`` without creating it.
    """
    os.environ.update(absolute_journey_paths(os.environ, Path.cwd()))
    home = Path(os.environ["JOURNEY_HOME"])
    (home / "features").mkdir(parents=True, exist_ok=True)
    return home


def release_warehouse(invocation: Any) -> None:
    """Close the connections this process opened through the dbt adapter of ``invocation``.

    Row counts and column metadata are read in this process once dbt has exited. On DuckDB the
    adapter keeps the database file open afterwards, and the next writer (the next dbt run,
    another stage's asset under the in-process executor) would find it locked.
    """
    adapter = getattr(invocation, "adapter", None)
    if adapter is not None:
        adapter.cleanup_connections()
    try:
        from dbt.adapters.duckdb.connections import DuckDBConnectionManager
    except ImportError:  # another adapter: nothing holds a file
        return
    DuckDBConnectionManager.close_all_connections()
    gc.collect()  # the dropped DuckDB environment closes its database when collected


def _stream_with_metadata(invocation: Any) -> Iterator[Any]:
    try:
        # Column lineage would re-parse every model's SQL with sqlglot on each run (seconds per
        # model, and it cannot resolve DuckDB table functions); the schema alone is enough.
        yield from (
            invocation.stream().fetch_row_counts().fetch_column_metadata(with_column_lineage=False)
        )
    finally:
        release_warehouse(invocation)


@dbt_assets(
    manifest=journey_dbt_project.manifest_path,
    project=journey_dbt_project,
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    name="feature_assets",
)
def feature_assets(context: dg.AssetExecutionContext, dbt: DbtCliResource) -> Iterator[Any]:
    """One ``dbt build`` per run: the staging and intermediate views, the feature dates of the
    run's partition window in the incremental mart (one run for a whole backfill), its tests
    and the Parquet export for Feast.

    The views and the export carry the partition too: rebuilding a view is free and the export
    always holds the whole mart, and one dbt process per day costs a third of three.
    """
    window = context.partition_time_window
    dbt_vars = partition_window_vars(window.start, window.end)
    context.log.info(
        f"building {FEATURE_MART} for feature dates {dbt_vars['start_date']} .. "
        f"{dbt_vars['end_date']}"
    )
    prepare_dbt_environment()
    yield from _stream_with_metadata(dbt.cli(dbt_build_args(dbt_vars), context=context))


dbt_feature_assets: list[dg.AssetsDefinition] = [feature_assets]
