"""Dagster jobs for the human controls (launchpad: fill in who and why)."""

import dagster as dg
from pydantic import Field

from journey_pipeline.decide import control
from journey_pipeline.resources import JourneyResource


class ControlConfig(dg.Config):
    who: str = Field(description="Who takes this action (recorded).")
    why: str = Field(description="Why (recorded).")


class PromoteConfig(ControlConfig):
    version: str = Field(description="Registered model version to make champion.")


@dg.op(tags={"journey/warehouse": "writer"})
def pause_autonomy_op(
    context: dg.OpExecutionContext, config: ControlConfig, journey: JourneyResource
):
    event = control.pause_autonomy(journey.settings(), config.who, config.why)
    context.log.warning(f"autonomy paused: {event}")
    return event


@dg.op(tags={"journey/warehouse": "writer"})
def resume_autonomy_op(
    context: dg.OpExecutionContext, config: ControlConfig, journey: JourneyResource
):
    event = control.resume_autonomy(journey.settings(), config.who, config.why)
    context.log.info(f"autonomy resumed: {event}")
    return event


@dg.op(tags={"journey/warehouse": "writer"})
def promote_op(context: dg.OpExecutionContext, config: PromoteConfig, journey: JourneyResource):
    event = control.promote(journey.settings(), config.version, config.who, config.why)
    context.log.info(f"promoted: {event}")
    return event


@dg.op(tags={"journey/warehouse": "writer"})
def rollback_op(context: dg.OpExecutionContext, config: ControlConfig, journey: JourneyResource):
    event = control.rollback(journey.settings(), config.who, config.why)
    context.log.warning(f"rolled back: {event}")
    return event


@dg.job(description="Kill switch: every contact gets the default action until autonomy resumes.")
def pause_autonomy_job():
    pause_autonomy_op()


@dg.job(description="Turn autonomy back on after a pause.")
def resume_autonomy_job():
    resume_autonomy_op()


@dg.job(description="Make a chosen model version the champion by hand (recorded with who/why).")
def promote_job():
    promote_op()


@dg.job(description="Move the champion back to the version it replaced (or pause if none).")
def rollback_job():
    rollback_op()


control_jobs = [pause_autonomy_job, resume_autonomy_job, promote_job, rollback_job]
