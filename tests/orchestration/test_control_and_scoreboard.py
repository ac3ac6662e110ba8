"""Human controls are recorded; the scoreboard reports only what was measured."""

import pytest

from journey_pipeline.decide import control
from journey_pipeline.decide.policy import autonomy_enabled
from journey_pipeline.learn.scoreboard import build_scoreboard, scoreboard_frame
from journey_pipeline.warehouse import ensure_core_schema, record_timing, warehouse


def test_pause_resume_and_rollback_without_a_champion_are_recorded(settings):
    with warehouse(settings.warehouse_path) as con:
        ensure_core_schema(con)
    control.pause_autonomy(settings, "ops@example", "incident 42")
    with warehouse(settings.warehouse_path) as con:
        assert not autonomy_enabled(con)
    control.resume_autonomy(settings, "ops", "fixed")
    event = control.rollback(settings, "guardrail", "margin loss")
    assert event["action"] == "pause"  # nothing to roll back to: autonomy goes off
    state = control.control_state(settings)
    assert state["autonomy"] is False and state["champion"] is None
    assert [e["action"] for e in state["recent_events"]] == ["pause", "resume", "pause"]
    with pytest.raises(ValueError, match="who"):
        control.pause_autonomy(settings, " ", "no one")


def test_scoreboard_without_data_says_so_and_computes_from_measurements(settings):
    with warehouse(settings.warehouse_path) as con:
        ensure_core_schema(con)
        con.execute(
            "CREATE TABLE contact_features_daily (feature_ts TIMESTAMP); "
            "CREATE SCHEMA decide; CREATE TABLE decide.decision_log (contact_id VARCHAR, "
            "decided_at TIMESTAMP, holdout BOOLEAN, mode VARCHAR)"
        )
        empty = scoreboard_frame(build_scoreboard(con, None, None, None))
        assert set(empty["status"]) == {"no data"}
        record_timing(con, "decide", "2026-01-01", 0.5, 1000)
        record_timing(con, "ingest", "2026-01-01", 2.0, 100_000, lag_seconds=30.0)
        metrics = {
            m.name: m for m in build_scoreboard(con, {"margin_per_user_lift": 1.5}, 0.03, 36.0)
        }
    assert metrics["decision latency (batch, per decision)"].value == 0.5
    assert metrics["event lag (median)"].value == 30.0
    assert metrics["incremental margin per user"].value == 1.5
    # 36 s x 2 vCPU at $0.05/vCPU-hour for 100,000 events -> per 1M events
    assert metrics["compute cost per 1M events"].value == pytest.approx(0.01)
    assert metrics["30-day retention (policy)"].status == "no data"
