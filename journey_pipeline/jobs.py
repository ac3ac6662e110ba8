"""Jobs: one per common action a user takes on the loop."""

import dagster as dg

from journey_pipeline.observe.sensors import INGEST_JOB

ingest_landing_job = dg.define_asset_job(
    name=INGEST_JOB,
    selection=dg.AssetSelection.groups("observe"),
    description="Ingest one day's landing files into raw.events (launched by the landing sensor).",
)

daily_loop_job = dg.define_asset_job(
    name="daily_loop_job",
    selection=(
        dg.AssetSelection.groups("observe", "features")
        | dg.AssetSelection.assets("decisions", "crm_writeback", "outcomes")
    ),
    description=(
        "Run the loop for one day: ingest its events, build the features as of its close, "
        "materialize them online, decide for its triggered contacts, write the decisions back "
        "to the CRM and update outcomes."
    ),
)

retrain_job = dg.define_asset_job(
    name="retrain_job",
    selection=dg.AssetSelection.assets("reward_model", "champion_model"),
    description=(
        "Retrain the reward models on matured outcomes, register a challenger and promote it "
        "only through the blocking promotion gate."
    ),
)

analysis_job = dg.define_asset_job(
    name="analysis_job",
    selection=dg.AssetSelection.assets(
        "experiment_analysis", "drift_report", "guardrail", "scoreboard"
    ),
    description=(
        "Measure the policy against the holdout, check the features for drift, apply the "
        "guardrail (automatic rollback) and refresh the scoreboard."
    ),
)

all_jobs = [ingest_landing_job, daily_loop_job, retrain_job, analysis_job]
