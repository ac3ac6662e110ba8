"""Observe: land CRM change events in the warehouse (thin Dagster wrappers)."""

import time
from datetime import date

import dagster as dg
from pydantic import Field

from journey_pipeline.observe.ingest import ingest_files
from journey_pipeline.observe.landing import landing_files
from journey_pipeline.observe.quality import (
    duplicate_event_ids,
    raw_email_hits,
    unreconciled_batches,
)
from journey_pipeline.partitions import daily_partitions
from journey_pipeline.resources import JourneyResource
from journey_pipeline.warehouse import record_timing, warehouse


class IngestConfig(dg.Config):
    follow: bool = Field(
        default=True,
        description=(
            "Treat files as still being written: an unterminated last line is left for the "
            "next run instead of being dead-lettered."
        ),
    )
    kafka_idle_timeout_s: float = Field(
        default=5.0,
        description=(
            "With JOURNEY_KAFKA_BOOTSTRAP set: stop draining the topic after this many "
            "seconds without a message."
        ),
    )


@dg.asset(
    group_name="observe",
    partitions_def=daily_partitions,
    kinds={"duckdb"},
    tags={"journey/warehouse": "writer"},
    pool="warehouse",
    description=(
        "Canonical CRM events of one day, validated, PII-tokenised and deduplicated by "
        "event_id into raw.events; bad records go to ops.dead_letter with a reason. With "
        "JOURNEY_KAFKA_BOOTSTRAP set, the Kafka topic is drained too (offsets committed after "
        "the warehouse write)."
    ),
)
def raw_events(
    context: dg.AssetExecutionContext, config: IngestConfig, journey: JourneyResource
) -> dg.MaterializeResult:
    settings = journey.settings()
    day = date.fromisoformat(context.partition_key)
    files = landing_files(settings.landing_dir, day)
    if not files:
        context.log.info(f"no landing files for {day} in {settings.landing_dir}")
    started = time.perf_counter()
    summary = ingest_files(settings.warehouse_path, files, settings, follow=config.follow)
    counts = summary.as_dict()
    kafka: dict = {}
    if settings.kafka_bootstrap_servers:
        from journey_pipeline.observe.kafka_source import consume

        kafka = consume(settings, idle_timeout_s=config.kafka_idle_timeout_s).as_dict()
        for key in ("received", "accepted", "duplicates", "dead_lettered"):
            counts[key] += kafka[key]
    seconds = time.perf_counter() - started
    # Event lag: from the newest landing file being written to its events being queryable.
    lag = time.time() - max(f.stat().st_mtime for f in files) if files else None
    with warehouse(settings.warehouse_path) as con:
        record_timing(con, "ingest", context.partition_key, seconds, counts["received"], lag)
        rows_for_day = con.execute(
            "SELECT count(*) FROM raw.events WHERE event_date = ?", [day]
        ).fetchone()[0]
    return dg.MaterializeResult(
        metadata={
            "files": dg.MetadataValue.json([str(f.name) for f in files]),
            "received": counts["received"],
            "accepted": counts["accepted"],
            "duplicates": counts["duplicates"],
            "dead_lettered": counts["dead_lettered"],
            "dagster/row_count": rows_for_day,
            "batch_id": str(counts.get("batch_id", "")),
            **(
                {
                    "kafka_received": kafka["received"],
                    "kafka_accepted": kafka["accepted"],
                    "kafka_batch_id": str(kafka["batch_id"]),
                }
                if kafka
                else {}
            ),
        }
    )


@dg.asset_check(asset=raw_events, blocking=True, description="No event_id occurs twice.")
def raw_events_unique_event_id(journey: JourneyResource) -> dg.AssetCheckResult:
    with warehouse(journey.settings().warehouse_path, read_only=True) as con:
        duplicates = duplicate_event_ids(con)
    return dg.AssetCheckResult(passed=duplicates == 0, metadata={"duplicate_ids": duplicates})


@dg.asset_check(
    asset=raw_events,
    blocking=True,
    description="Every batch reconciles: received = accepted + duplicates + dead_lettered.",
)
def raw_events_batches_reconcile(journey: JourneyResource) -> dg.AssetCheckResult:
    with warehouse(journey.settings().warehouse_path, read_only=True) as con:
        bad = unreconciled_batches(con)
    return dg.AssetCheckResult(
        passed=not bad,
        metadata={"unreconciled_batches": dg.MetadataValue.json([list(map(str, b)) for b in bad])},
    )


@dg.asset_check(
    asset=raw_events,
    blocking=True,
    description="No raw email address in any warehouse table (PII must be tokenised).",
)
def raw_events_no_raw_email(journey: JourneyResource) -> dg.AssetCheckResult:
    with warehouse(journey.settings().warehouse_path, read_only=True) as con:
        hits = raw_email_hits(con)
    return dg.AssetCheckResult(
        passed=not hits, metadata={"columns_with_emails": dg.MetadataValue.json(hits)}
    )


# ops.erasures is written by the same ingestion (a contact.deleted event is an erasure
# request); declared so dbt's source for it sits in the observe group of the graph.
erasures = dg.AssetSpec(
    "erasures",
    group_name="observe",
    deps=[raw_events],
    kinds={"duckdb"},
    description=(
        "Contacts erased by a contact.deleted event (ops.erasures), recorded by raw_events "
        "ingestion; features, the online store and decisions drop these contacts."
    ),
)

observe_assets = [raw_events, erasures]
observe_checks = [raw_events_unique_event_id, raw_events_batches_reconcile, raw_events_no_raw_email]
