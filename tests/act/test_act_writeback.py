"""Write-back from a real DuckDB decision log to the local CRM, re-run safe."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
from conftest import decision_rows

from journey_pipeline.act.crm import LocalCrm
from journey_pipeline.act.outbox import Outbox
from journey_pipeline.act.writeback import live_decisions_from_log, write_back
from journey_pipeline.decide.log import append_decisions
from journey_pipeline.warehouse import warehouse


def seed_log(settings, rows):
    frame = pd.DataFrame(rows)
    frame["decided_at"] = pd.to_datetime(frame["decided_at"], utc=True).dt.tz_localize(None)
    frame["decision_date"] = frame["decided_at"].dt.date
    with warehouse(settings.warehouse_path) as con:
        return append_decisions(con, frame)


def log_rows():
    rows = decision_rows(8)
    rows[1]["mode"] = "shadow"
    rows[2]["action"] = "no_offer"
    for row in rows[5:]:
        row["decided_at"] = datetime(2026, 3, 3, 10, 0, tzinfo=UTC)
    return rows


def test_live_offers_of_a_day_reach_the_crm_once(settings, clock):
    assert seed_log(settings, log_rows()) == 8
    crm = LocalCrm(settings.crm_path)

    first = write_back(settings, adapter=crm, decision_date="2026-03-02", clock=clock)
    assert first.decisions_read == 3 and first.enqueued == 3  # d00000, d00003, d00004
    assert first.dispatch.confirmed == 3 and crm.task_count() == 3
    assert first.status_counts["confirmed"] == 3
    assert first.as_metadata()["dispatch_confirmed"] == 3

    again = write_back(settings, adapter=crm, decision_date="2026-03-02", clock=clock)
    assert again.enqueued == 0 and again.dispatch.sent == 0 and crm.task_count() == 3

    rest = write_back(settings, adapter=crm, clock=clock)  # the whole log
    assert rest.decisions_read == 6 and rest.enqueued == 3 and crm.task_count() == 6
    box = Outbox.from_settings(settings)
    try:
        assert {r["decision_id"] for r in box.rows()} == {
            "d00000",
            "d00003",
            "d00004",
            "d00005",
            "d00006",
            "d00007",
        }
        assert box.rows()[0]["payload"]["expected_rewards"]["offer_a"] == 1.5
    finally:
        box.dispose()


def test_default_adapter_is_the_local_crm_and_an_empty_home_is_fine(settings, clock):
    assert live_decisions_from_log(settings).empty
    report = write_back(settings, clock=clock)
    assert report.decisions_read == 0 and report.dispatch.sent == 0
    seed_log(settings, decision_rows(2))
    report = write_back(settings, clock=clock)
    assert report.dispatch.confirmed == 2
    assert LocalCrm(settings.crm_path).task_count() == 2
