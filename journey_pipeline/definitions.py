"""Assembles the Dagster definitions of the loop: observe -> features -> decide -> act -> learn.

Nothing here reads the environment or opens a store: resources resolve settings at run time.
"""

import dagster as dg

from journey_pipeline.act.assets import act_assets
from journey_pipeline.decide.assets import decide_assets, decide_checks
from journey_pipeline.decide.control_jobs import control_jobs
from journey_pipeline.features.dbt_assets import dbt_feature_assets, dbt_resource
from journey_pipeline.features.feast_assets import feast_assets, feast_checks, feast_resources
from journey_pipeline.jobs import all_jobs
from journey_pipeline.learn.assets import learn_assets, learn_checks
from journey_pipeline.learn.sensors import learn_schedules, learn_sensors
from journey_pipeline.observe.assets import observe_assets, observe_checks
from journey_pipeline.observe.sensors import landing_files_sensor
from journey_pipeline.resources import JourneyResource

defs = dg.Definitions(
    assets=[
        *observe_assets,
        *dbt_feature_assets,
        *feast_assets,
        *decide_assets,
        *act_assets,
        *learn_assets,
    ],
    asset_checks=[*observe_checks, *feast_checks, *decide_checks, *learn_checks],
    jobs=[*all_jobs, *control_jobs],
    sensors=[landing_files_sensor, *learn_sensors],
    schedules=learn_schedules,
    resources={"journey": JourneyResource(), "dbt": dbt_resource(), **feast_resources},
    # One process per run: DuckDB takes one writer per file, and the loop's steps are
    # sequential anyway. Switch to the multiprocess executor with pools for wide graphs.
    executor=dg.in_process_executor,
)
