"""The definitions load, and the graph reads as the loop."""

import subprocess
import sys
from pathlib import Path

import dagster as dg

from journey_pipeline.definitions import defs

REPO = Path(__file__).resolve().parents[2]
STAGES = {"observe", "features", "decide", "act", "learn"}


def test_every_asset_is_in_a_stage_group_and_described():
    graph = defs.resolve_asset_graph()
    groups = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if not node.is_materializable:
            continue
        groups.setdefault(node.group_name, []).append(key.to_user_string())
        assert node.description, f"{key.to_user_string()} has no description"
    assert set(groups) == STAGES, groups


def test_the_loop_is_wired_in_order():
    graph = defs.resolve_asset_graph()

    def upstream(name: str) -> set[str]:
        return {k.to_user_string() for k in graph.get(dg.AssetKey(name)).parent_keys}

    assert "raw_events" in upstream("stg_contact_events")
    assert "contact_features_export" in upstream("online_features")
    assert {"raw_events", "online_features"} <= upstream("decisions")
    assert "decisions" in upstream("crm_writeback")
    assert "crm_writeback" in upstream("outcomes")
    assert "outcomes" in upstream("reward_model")


def test_jobs_sensors_and_checks_exist():
    for job in ("daily_loop_job", "ingest_landing_job", "retrain_job", "analysis_job"):
        assert defs.resolve_job_def(job) is not None
    assert defs.resolve_sensor_def("landing_files_sensor") is not None
    check_keys = {k.name for k in defs.resolve_asset_graph().asset_check_keys}
    assert {
        "raw_events_no_raw_email",
        "online_features_parity",
        "challenger_beats_champion",
    } <= check_keys


def test_dagster_cli_validates_the_workspace(journey_home):
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("dagster")),
            "definitions",
            "validate",
            "-w",
            "workspace.yaml",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Validation successful" in (result.stdout + result.stderr)
