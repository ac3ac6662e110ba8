"""Partitioning shared by every stage: one partition per UTC day of event time."""

import dagster as dg

# The simulator's default world starts on this date; real data before it is not partitioned.
START_DATE = "2026-01-01"

daily_partitions = dg.DailyPartitionsDefinition(start_date=START_DATE, timezone="UTC")
