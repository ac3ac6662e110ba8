"""Sensors of the observe stage: launch ingestion when landing files appear or grow."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import dagster as dg

from journey_pipeline.observe.landing import file_day, landing_files
from journey_pipeline.resources import JourneyResource

INGEST_JOB = "ingest_landing_job"


def new_landing_work(
    files: list[tuple[str, int, str]], cursor: dict[str, int]
) -> tuple[list[tuple[str, str, int]], dict[str, int]]:
    """Decide which files need ingestion.

    ``files`` are (name, size, partition day); ``cursor`` maps names to the size already
    requested. Returns (partition day, file name, size) work items and the new cursor. A file
    that grew (a producer appending) is requested again: ingestion resumes at its offset.
    """
    work, new_cursor = [], dict(cursor)
    for name, size, day in files:
        if size > 0 and cursor.get(name) != size:
            work.append((day, name, size))
            new_cursor[name] = size
    return work, new_cursor


@dg.sensor(
    name="landing_files_sensor",
    job_name=INGEST_JOB,
    minimum_interval_seconds=30,
    description=(
        "Watches JOURNEY_HOME/landing for new or grown *.jsonl files and launches ingestion of "
        "their day's partition (run_key = file@size, so a re-evaluated tick never runs twice)."
    ),
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def landing_files_sensor(context: dg.SensorEvaluationContext, journey: JourneyResource):
    settings = journey.settings()
    cursor = json.loads(context.cursor) if context.cursor else {}
    today = datetime.now(UTC).date().isoformat()
    files = []
    for path in landing_files(settings.landing_dir):
        day = file_day(path)
        files.append((path.name, path.stat().st_size, day.isoformat() if day else today))
    work, new_cursor = new_landing_work(files, cursor)
    if not work:
        context.update_cursor(json.dumps(new_cursor, sort_keys=True))
        return dg.SkipReason(f"no new data in {settings.landing_dir}")
    requests = [
        dg.RunRequest(
            run_key=f"{name}@{size}",
            partition_key=day,
            tags={"journey/landing_file": name},
        )
        for day, name, size in work
    ]
    context.update_cursor(json.dumps(new_cursor, sort_keys=True))
    return requests
