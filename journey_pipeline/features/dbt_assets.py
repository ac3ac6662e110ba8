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

What a daily run costs, and what keeps it low: each run starts one ``dbt build`` process. Its
artifacts go to one target folder per ``JOURNEY_HOME`` (``JOURNEY_HOME/dbt/target``) instead of
a fresh folder per run, and the partition window reaches dbt through environment variables
(:func:`.dbt_args.feature_window_env`) instead of ``--vars``, so the command line, the profile
and the previous run's ``partial_parse.msgpack`` match and dbt re-parses nothing. The dbt
version is read once per process, not with a ``dbt --version`` subprocess per run.
"""

import functools
import gc
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DbtCliResource, DbtProject, dbt_assets
from packaging import version

from journey_pipeline.features.dbt_args import (
    FEATURE_MART,
    absolute_journey_paths,
    dbt_build_args,
    feature_window_env,
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


@functools.cache
def dbt_cli_version(executable: str) -> version.Version:
    """Version of the dbt CLI ``executable``, asked once per process (``dbt --version`` starts
    a Python process that imports dbt: seconds, on every run otherwise)."""
    output = subprocess.check_output([executable, "--version"]).decode("utf-8")
    match = re.search(r"(\d+\.\d+\.\d+)", output)
    if not match:
        raise ValueError(f"could not read the dbt version from `{executable} --version`: {output}")
    return version.parse(match.group(1))


class JourneyDbtCliResource(DbtCliResource):
    """dagster-dbt's ``DbtCliResource`` with the dbt version cached per process.

    Dagster builds a new resource object for every run, and the stock resource runs
    ``dbt --version`` once per object before each dbt command."""

    @property
    def _cli_version(self) -> version.Version:
        return dbt_cli_version(self.dbt_executable)


def dbt_resource(target: str | None = None) -> DbtCliResource:
    """The ``dbt`` resource the feature assets need: the project's CLI on ``target``
    (``local`` DuckDB when None; ``postgres`` for the production profile)."""
    return JourneyDbtCliResource(
        project_dir=journey_dbt_project, target=target, dbt_executable=dbt_executable()
    )


def dbt_target_path(home: Path) -> Path:
    """The dbt target folder of the state under ``home``: artifacts and the partial parse that
    the next run reuses. One per home, because the parse depends on the profile's paths."""
    return home / "dbt" / "target"


@contextmanager
def environment(variables: Mapping[str, str | None]) -> Iterator[None]:
    """Set ``variables`` in this process's environment for the ``with`` block (None unsets
    one), then restore what was there. dagster-dbt copies the environment when it starts the
    dbt process."""
    saved = {name: os.environ.get(name) for name in variables}
    for name, value in variables.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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
    environment = DuckDBConnectionManager._ENV
    if environment is not None and hasattr(environment, "close"):
        environment.close()  # closes the database now rather than when collected
    DuckDBConnectionManager.close_all_connections()
    if _duckdb_file_held(adapter):
        gc.collect()  # the dropped DuckDB environment closes its database when collected


def _duckdb_file_held(adapter: Any) -> bool:
    """True unless this process can open the adapter's DuckDB file for writing, which DuckDB
    refuses while a read-only handle of it is still alive here. A full garbage collection
    costs about a second on a large heap, so it only runs when a handle survived."""
    path = getattr(getattr(getattr(adapter, "config", None), "credentials", None), "path", None)
    if not path or path == ":memory:" or not Path(path).exists():
        return adapter is None
    import duckdb

    try:
        duckdb.connect(path).close()
    except duckdb.Error:
        return True
    return False


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
    home = prepare_dbt_environment()
    with environment(feature_window_env(dbt_vars)):
        invocation = dbt.cli(dbt_build_args(), context=context, target_path=dbt_target_path(home))
    yield from _stream_with_metadata(invocation)


dbt_feature_assets: list[dg.AssetsDefinition] = [feature_assets]
