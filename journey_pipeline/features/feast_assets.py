"""Dagster assets of the Feast feature store (group ``features``): thin wrappers around
:mod:`journey_pipeline.features.feature_store`.

``feast_registry`` applies the feature definitions; ``online_features`` brings the online
store to the newest row of every contact after the dbt export, incrementally; its checks
gate serving on offline/online parity (blocking), feature freshness and row counts.
"""

import hashlib
from datetime import UTC, datetime

import dagster as dg
from feast import FeatureStore

from journey_pipeline.features import feature_store as fs
from journey_pipeline.resources import JourneyResource
from journey_pipeline.settings import Settings

GROUP = "features"
DBT_EXPORT_ASSET = dg.AssetKey(["contact_features_export"])


class FeatureStoreResource(dg.ConfigurableResource):
    """The Feast store of the settings profile (SQLite locally, Redis + SQL registry in
    production). ``project`` separates Feast projects sharing one registry or Redis."""

    project: str = fs.PROJECT

    def get_store(self, settings: Settings) -> FeatureStore:
        """A FeatureStore whose paths follow ``settings.home`` and the settings profile."""
        return fs.build_store(settings, project=self.project)


class MaterializeConfig(dg.Config):
    """Launchpad knobs of the online materialization."""

    full: bool = False  # rewrite every contact, not only changed ones
    batch_size: int = 50_000


class ParityCheckConfig(dg.Config):
    sample_size: int = 500
    # None: a seed derived from the run id, so each run samples other contacts and a
    # re-executed run samples the same ones.
    seed: int | None = None


class FreshnessCheckConfig(dg.Config):
    # Day D's row has feature_ts = D 00:00 UTC; a daily run keeps the lag under two days.
    max_lag_hours: float = 48.0


def _seed_for_run(run_id: str) -> int:
    return int(hashlib.sha256(run_id.encode()).hexdigest()[:8], 16)


@dg.asset(
    group_name=GROUP,
    description="Feast registry: entity contact, feature view contact_features, feature "
    "service next_best_action (the same objects `feast -c feature_repo apply` registers).",
    kinds={"feast"},
)
def feast_registry(
    context: dg.AssetExecutionContext,
    journey: JourneyResource,
    feature_store: FeatureStoreResource,
) -> dg.MaterializeResult:
    settings = journey.settings()
    store = feature_store.get_store(settings)
    applied = fs.apply_definitions(store, fs.export_path(settings))
    context.log.info("applied Feast objects %s to project %s", applied, store.project)
    return dg.MaterializeResult(
        metadata={
            "project": store.project,
            "objects": dg.MetadataValue.json(applied),
            "offline_source": dg.MetadataValue.path(str(fs.export_path(settings))),
            "profile": settings.profile,
        }
    )


@dg.asset(
    group_name=GROUP,
    deps=[DBT_EXPORT_ASSET, feast_registry],
    description="Online store holding each contact's newest offline feature row; written "
    "incrementally (changed contacts only) through Feast; erased contacts are deleted.",
    kinds={"feast"},
    automation_condition=dg.AutomationCondition.eager(),
)
def online_features(
    context: dg.AssetExecutionContext,
    config: MaterializeConfig,
    journey: JourneyResource,
    feature_store: FeatureStoreResource,
) -> dg.MaterializeResult:
    settings = journey.settings()
    store = feature_store.get_store(settings)
    summary = fs.materialize_latest(
        store,
        settings,
        batch_size=config.batch_size,
        full=config.full,
    )
    context.log.info("online materialization: %s", summary)
    newest = summary["newest_feature_ts"]
    return dg.MaterializeResult(
        metadata={
            "rows_written": summary["rows_written"],
            "contacts": summary["contacts"],
            "unchanged": summary["unchanged"],
            "erased": summary["erased"],
            "newest_feature_ts": dg.MetadataValue.timestamp(newest) if newest else "none",
            "seconds": dg.MetadataValue.float(round(summary["seconds"], 3)),
            "contacts_per_second": dg.MetadataValue.float(
                round(summary["rows_written"] / summary["seconds"], 1)
                if summary["seconds"]
                else 0.0
            ),
        }
    )


@dg.asset_check(
    asset=online_features,
    blocking=True,
    description="A random sample of contacts: online values equal the latest offline row.",
)
def online_features_parity(
    context: dg.AssetCheckExecutionContext,
    config: ParityCheckConfig,
    journey: JourneyResource,
    feature_store: FeatureStoreResource,
) -> dg.AssetCheckResult:
    settings = journey.settings()
    seed = config.seed if config.seed is not None else _seed_for_run(context.run.run_id)
    result = fs.check_parity(
        feature_store.get_store(settings), settings, sample_size=config.sample_size, seed=seed
    )
    mismatches = [
        {"contact_id": m.contact_id, "feature": m.feature, "offline": m.offline, "online": m.online}
        for m in result.mismatches[:50]
    ]
    return dg.AssetCheckResult(
        passed=result.passed,
        description=result.summary(),
        metadata={
            "sampled_contacts": result.sampled,
            "compared_values": result.compared_values,
            "mismatched_values": len(result.mismatches),
            "missing_online": len(result.missing_online),
            "seed": seed,
            "mismatches": dg.MetadataValue.json(mismatches),
        },
    )


@dg.asset_check(
    asset=online_features,
    description="Lag of the newest feature_ts served online behind the time of the check.",
)
def online_features_freshness(
    config: FreshnessCheckConfig, journey: JourneyResource, feature_store: FeatureStoreResource
) -> dg.AssetCheckResult:
    settings = journey.settings()
    freshness = fs.feature_freshness(settings, datetime.now(UTC), project=feature_store.project)
    lag_hours = freshness.lag_hours
    passed = lag_hours is not None and lag_hours <= config.max_lag_hours
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            "no features online yet"
            if lag_hours is None
            else f"newest feature_ts lags {lag_hours:.1f} h (limit {config.max_lag_hours} h)"
        ),
        metadata={
            "lag_hours": dg.MetadataValue.float(round(lag_hours, 3) if lag_hours else 0.0),
            "newest_feature_ts": str(freshness.newest_feature_ts),
            "contacts": freshness.contacts,
        },
    )


@dg.asset_check(
    asset=online_features,
    description="The online store holds one entry per contact of the offline export.",
)
def online_features_row_count(
    journey: JourneyResource, feature_store: FeatureStoreResource
) -> dg.AssetCheckResult:
    settings = journey.settings()
    store = feature_store.get_store(settings)
    counts = fs.online_offline_counts(store, settings)
    return dg.AssetCheckResult(
        passed=counts["offline_contacts"] == counts["online_contacts"],
        description=(
            f"{counts['online_contacts']} contacts online, "
            f"{counts['offline_contacts']} in the offline export"
        ),
        metadata=counts,
    )


feast_assets = [feast_registry, online_features]
feast_checks = [online_features_parity, online_features_freshness, online_features_row_count]
feast_resources = {"feature_store": FeatureStoreResource()}
