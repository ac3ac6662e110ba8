"""The dbt feature marts as Dagster assets: definitions, a partition materialised with
`dg.materialize`, dbt tests as (blocking) asset checks, and the manifest on a fresh clone."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import dagster as dg
import pytest
from dagster_dbt import DbtProject

from journey_pipeline.features.contract import EXPORT_FILE, MART
from journey_pipeline.features.dbt_assets import (
    DBT_PROJECT_DIR,
    dbt_feature_assets,
    dbt_resource,
    ensure_dbt_manifest,
    feature_assets,
    manifest_is_stale,
)
from journey_pipeline.partitions import daily_partitions
from journey_pipeline.warehouse import ensure_core_schema, warehouse

MART_KEY = dg.AssetKey([MART])
VIEW_KEYS = [
    dg.AssetKey([name])
    for name in (
        "stg_erasures",
        "stg_contact_events",
        "stg_contacts",
        "int_contact_daily",
        "int_contact_lifecycle_history",
        "int_contact_properties",
        "int_offer_outcomes",
    )
]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    journey_home = tmp_path / "home"
    monkeypatch.setenv("JOURNEY_HOME", str(journey_home))
    monkeypatch.delenv("JOURNEY_WAREHOUSE_PATH", raising=False)
    monkeypatch.delenv("JOURNEY_DBT_TARGET", raising=False)
    with warehouse(journey_home / "warehouse.duckdb") as con:
        ensure_core_schema(con)
        # Two contacts with a purchase; all events fall before partition 2026-02-28's end.
        con.execute(
            """
            INSERT INTO raw.events (event_id, occurred_at, event_date, event_type, source,
                contact_id, lifecycle_stage, amount, batch_id, ingested_at)
            VALUES
              ('e1', '2026-02-01 09:00', '2026-02-01', 'contact.created', 't', 'C-1', 'lead',
               NULL, 'b', now()),
              ('e2', '2026-02-10 10:00', '2026-02-10', 'payment.succeeded', 't', 'C-1', NULL,
               30.0, 'b', now()),
              ('e3', '2026-02-20 11:00', '2026-02-20', 'contact.created', 't', 'C-2',
               'subscriber', NULL, 'b', now()),
              ('e4', '2026-02-28 23:00', '2026-02-28', 'payment.succeeded', 't', 'C-2', NULL,
               12.5, 'b', now())
            """
        )
    return journey_home


def materialize_views_then_partition(partition_key: str) -> dg.ExecuteInJobResult:
    """Build one partition: the views, the mart's feature dates and the export, in one run."""
    return dg.materialize(
        [feature_assets],
        partition_key=partition_key,
        resources={"dbt": dbt_resource()},
        raise_on_error=False,
    )


def test_definitions_wire_observe_to_the_marts_in_group_features() -> None:
    assert [a.node_def.name for a in dbt_feature_assets] == ["feature_assets"]
    assert {MART_KEY, dg.AssetKey(["contact_features_export"]), *VIEW_KEYS} == set(
        feature_assets.keys
    )
    assert feature_assets.partitions_def == daily_partitions
    assert feature_assets.backfill_policy == dg.BackfillPolicy.single_run()
    assert set(feature_assets.group_names_by_key.values()) == {"features"}
    upstream = {key for keys in feature_assets.asset_deps.values() for key in keys}
    assert dg.AssetKey(["raw_events"]) in upstream
    assert MART_KEY in feature_assets.asset_deps[dg.AssetKey(["contact_features_export"])]
    check_names = {spec.name for spec in feature_assets.check_specs}
    assert "assert_features_use_only_events_before_cutoff" in check_names
    assert any(name.startswith("unique_combination_of_columns") for name in check_names)
    assert all(spec.blocking for spec in feature_assets.check_specs)
    dg.Definitions(assets=dbt_feature_assets, resources={"dbt": dbt_resource()})


@pytest.mark.slow
def test_materialize_one_partition_builds_its_feature_date_with_checks_and_metadata(
    home: Path,
) -> None:
    result = materialize_views_then_partition("2026-02-28")
    assert result.success

    # Partition 2026-02-28 (events of that day) builds the features dated 2026-03-01.
    with warehouse(home / "warehouse.duckdb", read_only=True) as con:
        rows = con.execute(
            f"SELECT contact_id, feature_date, spend_30d, orders_30d FROM {MART} ORDER BY 1"
        ).fetchall()
    assert rows == [
        ("C-1", dt.date(2026, 3, 1), 30.0, 1),
        ("C-2", dt.date(2026, 3, 1), 12.5, 1),
    ]

    [materialization] = [
        m
        for m in result.asset_materializations_for_node("feature_assets")
        if m.asset_key == MART_KEY
    ]
    assert materialization.partition == "2026-02-28"
    assert materialization.metadata["dagster/row_count"].value == 2
    columns = materialization.metadata["dagster/column_schema"].value.columns
    assert {"contact_id", "feature_ts", "spend_30d", "last_action"} <= {c.name for c in columns}

    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == len(feature_assets.check_specs)
    assert all(e.passed for e in evaluations)
    assert (home / "features" / EXPORT_FILE).exists()


@pytest.mark.slow
def test_failing_dbt_test_is_a_failed_blocking_check(home: Path) -> None:
    with warehouse(home / "warehouse.duckdb") as con:
        con.execute(
            "INSERT INTO raw.events (event_id, occurred_at, event_date, event_type, source, "
            "contact_id, lifecycle_stage, batch_id, ingested_at) VALUES ('bad', "
            "'2026-02-27 08:00', '2026-02-27', 'contact.created', 't', 'C-9', 'vip', 'b', now())"
        )
    result = materialize_views_then_partition("2026-02-28")
    assert not result.success

    failed = {e.check_name: e for e in result.get_asset_check_evaluations() if not e.passed}
    accepted_values = next(name for name in failed if name.startswith("accepted_values"))
    assert "lifecycle_stage" in accepted_values
    assert failed[accepted_values].severity == dg.AssetCheckSeverity.ERROR
    spec = next(s for s in feature_assets.check_specs if s.name == accepted_values)
    assert spec.blocking
    # The run fails with dbt's own account of the failing test.
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "dbt" in failure.step_failure_data.error.message
    assert not (home / "features" / EXPORT_FILE).exists()


@pytest.mark.slow
def test_ensure_dbt_manifest_parses_a_fresh_clone(tmp_path: Path) -> None:
    clone = tmp_path / "dbt_project"
    shutil.copytree(DBT_PROJECT_DIR, clone, ignore=shutil.ignore_patterns("target", "logs"))
    project = DbtProject(project_dir=clone, profiles_dir=clone, target="local")
    assert manifest_is_stale(project)

    manifest = ensure_dbt_manifest(project)
    assert manifest.exists() and not manifest_is_stale(project)

    # Editing a model makes the manifest stale again.
    model = clone / "models" / "marts" / "contact_features_export.sql"
    later = manifest.stat().st_mtime + 10
    os.utime(model, (later, later))
    assert manifest_is_stale(project)
