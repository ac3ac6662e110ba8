"""Which contacts the daily batch decides for, and when."""

from datetime import date, datetime

import pytest

from journey_pipeline.decide.scoring import day_triggers, decision_time
from journey_pipeline.warehouse import ensure_core_schema, warehouse

EVENTS = [
    # contact, type, stage, occurred_at, event_id
    ("C-1", "contact.created", "lead", "2026-01-01 08:00", "e01"),
    ("C-1", "cart.abandoned", None, "2026-01-02 09:00", "e02"),
    ("C-1", "cart.abandoned", None, "2026-01-02 17:00", "e03"),  # second trigger, same day
    ("C-2", "contact.created", "sql", "2026-01-01 08:00", "e04"),
    ("C-2", "contact.updated", "opportunity", "2026-01-02 10:00", "e05"),  # became opportunity
    ("C-3", "contact.created", "opportunity", "2026-01-01 08:00", "e06"),
    ("C-3", "contact.updated", "opportunity", "2026-01-02 11:00", "e07"),  # no change of stage
    ("C-4", "cart.abandoned", None, "2026-01-03 00:00", "e08"),  # next day
    ("C-5", "cart.abandoned", None, "2026-01-02 12:00", "e09"),  # erased below
]


@pytest.fixture
def con(tmp_path):
    with warehouse(tmp_path / "w.duckdb") as con:
        ensure_core_schema(con)
        for contact, kind, stage, at, event_id in EVENTS:
            con.execute(
                "INSERT INTO raw.events (event_id, occurred_at, event_date, event_type, source, "
                "contact_id, lifecycle_stage, batch_id, ingested_at) "
                "VALUES (?, ?, CAST(? AS DATE), ?, 'test', ?, ?, 'b', now())",
                [event_id, at, at[:10], kind, contact, stage],
            )
        con.execute("INSERT INTO ops.erasures VALUES ('C-5', '2026-01-02 13:00', 'e10')")
        yield con


def test_day_triggers_one_per_contact_and_only_real_stage_changes(con):
    triggers = day_triggers(con, date(2026, 1, 2))
    rows = triggers[["contact_id", "trigger_event_id", "trigger_type"]].values.tolist()
    assert rows == [
        ["C-1", "e02", "cart.abandoned"],
        ["C-2", "e05", "lifecycle.opportunity"],
    ]
    assert (triggers["decided_at"] == datetime(2026, 1, 3)).all()


def test_decisions_are_taken_at_the_close_of_the_day():
    assert decision_time(date(2026, 1, 31)) == datetime(2026, 2, 1)


def test_a_day_without_triggers_is_empty(con):
    assert day_triggers(con, date(2026, 1, 5)).empty


def test_outcomes_of_a_day_rebuild_the_windows_its_events_touch_and_mature_them():
    from journey_pipeline.learn.analysis import outcome_rebuild_range

    start, end, as_of = outcome_rebuild_range(date(2026, 1, 20), 7)
    assert (start, end) == (date(2026, 1, 13), date(2026, 1, 21))
    assert as_of == datetime(2026, 1, 21)
    # A decision dated 2026-01-14 (taken at the close of the 13th) has its 7-day window end
    # at 2026-01-21 00:00: inside the range, and matured by this as_of.
    assert start <= date(2026, 1, 14) and datetime(2026, 1, 21) <= as_of
