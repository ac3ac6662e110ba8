"""The Feast Dagster assets and checks, materialized with real SQLite and Parquet."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import pandas as pd
import pyarrow as pa

from journey_pipeline.features import feast_assets
from journey_pipeline.features import feature_store as fs
from journey_pipeline.resources import JourneyResource

CONTACTS = 30


def _resources(settings) -> dict:
    return {
        "journey": JourneyResource(home=str(settings.home)),
        "feature_store": feast_assets.FeatureStoreResource(),
    }


def _export(settings, days: int) -> pa.Table:
    # The newest day is yesterday, so the freshness check sees a recent feature_ts.
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(
        days=days
    )
    rows = fs.synthetic_feature_rows(CONTACTS, days, seed=4, start=start)
    fs.write_feature_export(rows, fs.export_path(settings))
    return rows


def _check_results(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {
        evaluation.check_name: evaluation.passed
        for evaluation in result.get_asset_check_evaluations()
    }


def test_assets_and_checks_are_declared_in_the_features_group():
    assert {a.key.to_user_string() for a in feast_assets.feast_assets} == {
        "feast_registry",
        "online_features",
    }
    online = feast_assets.online_features
    assert online.group_names_by_key[online.key] == "features"
    deps = {key.to_user_string() for key in online.asset_deps[online.key]}
    assert deps == {"contact_features_export", "feast_registry"}
    specs = {spec.name: spec for check in feast_assets.feast_checks for spec in check.check_specs}
    assert set(specs) == {
        "online_features_parity",
        "online_features_freshness",
        "online_features_row_count",
    }
    assert specs["online_features_parity"].blocking
    defs = dg.Definitions(
        assets=feast_assets.feast_assets,
        asset_checks=feast_assets.feast_checks,
        resources={"journey": JourneyResource(), **feast_assets.feast_resources},
    )
    defs.resolve_all_job_defs()


def test_materializing_the_assets_serves_features_and_passes_the_checks(settings):
    _export(settings, days=2)
    result = dg.materialize(
        [*feast_assets.feast_assets, *feast_assets.feast_checks],
        resources=_resources(settings),
    )
    assert result.success
    assert _check_results(result) == {
        "online_features_parity": True,
        "online_features_freshness": True,
        "online_features_row_count": True,
    }
    materialization = result.asset_materializations_for_node("online_features")[0]
    metadata = materialization.metadata
    assert metadata["rows_written"].value == CONTACTS
    assert metadata["contacts"].value == CONTACTS
    assert "newest_feature_ts" in metadata and "seconds" in metadata

    store = fs.build_store(settings)
    assert fs.online_features(store, ["C-0000002"]).notna().any(axis=None)

    # A second run writes nothing new and still passes.
    again = dg.materialize(
        [*feast_assets.feast_assets, *feast_assets.feast_checks],
        resources=_resources(settings),
        selection=["online_features"],
    )
    assert again.success
    rerun = again.asset_materializations_for_node("online_features")[0]
    assert rerun.metadata["rows_written"].value == 0


def test_the_blocking_parity_check_fails_on_a_tampered_online_value(settings):
    rows = _export(settings, days=1)
    resources = _resources(settings)
    assert dg.materialize(
        [*feast_assets.feast_assets, *feast_assets.feast_checks], resources=resources
    ).success

    store = fs.build_store(settings)
    tampered = rows.slice(5, 1).select(["contact_id", "feature_ts", "created_ts", *fs.FEATURES])
    frame = tampered.to_pandas(types_mapper=pd.ArrowDtype)
    frame["spend_90d"] = frame["spend_90d"] + 10.0
    store.write_to_online_store(fs.FEATURE_VIEW, frame)

    checked = dg.materialize(
        [*feast_assets.feast_assets, *feast_assets.feast_checks],
        resources=resources,
        selection=dg.AssetSelection.checks(feast_assets.online_features_parity),
        run_config={
            "ops": {"online_features_online_features_parity": {"config": {"sample_size": 100}}}
        },
        raise_on_error=False,
    )
    evaluations = checked.get_asset_check_evaluations()
    assert [e.check_name for e in evaluations] == ["online_features_parity"]
    (parity,) = evaluations
    assert not parity.passed
    assert parity.metadata["mismatched_values"].value == 1
    assert "C-0000005" in parity.description
