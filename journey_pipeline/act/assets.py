"""Act: write the day's live decisions back to the CRM exactly once (thin Dagster wrapper)."""

from datetime import date, timedelta

import dagster as dg
from pydantic import Field

from journey_pipeline.act.writeback import write_back
from journey_pipeline.partitions import daily_partitions
from journey_pipeline.resources import JourneyResource


class WritebackConfig(dg.Config):
    max_batch: int = Field(default=500, description="Outbox rows claimed per dispatch round.")
    max_wait_s: float = Field(
        default=30.0,
        description="Longest the run waits on a CRM's Retry-After before leaving the row for later.",
    )


@dg.asset(
    group_name="act",
    partitions_def=daily_partitions,
    deps=[dg.AssetKey("decisions")],
    kinds={"sqlite", "crm"},
    description=(
        "Live offers of the day enter the CRM outbox (idempotent on decision_id) and are "
        "dispatched to the CRM adapter: pending -> sent -> confirmed, retries with backoff, "
        "permanent failures dead-lettered. A retry, re-run or crash never creates a second task."
    ),
)
def crm_writeback(
    context: dg.AssetExecutionContext, config: WritebackConfig, journey: JourneyResource
) -> dg.MaterializeResult:
    settings = journey.settings()
    # A partition's decisions are taken at the close of its day (00:00 of the next day).
    decided_on = date.fromisoformat(context.partition_key) + timedelta(days=1)
    report = write_back(
        settings, decision_date=decided_on, max_batch=config.max_batch, max_wait_s=config.max_wait_s
    )
    metadata = report.as_metadata()
    if report.new_dead_letters:
        context.log.warning(f"{len(report.new_dead_letters)} decisions dead-lettered by the CRM")
        metadata["dead_letters"] = dg.MetadataValue.json(report.new_dead_letters[:20])
    metadata["crm"] = settings.crm_kind
    return dg.MaterializeResult(metadata=metadata)


act_assets = [crm_writeback]
