"""`journey demo` from the command line: a quiet terminal, the run logs in a file, the report.

stdout carries exactly one line, the JSON summary (so `journey demo | tail -1 | jq` works);
the progress bars and tables go to stderr; dbt's per-node lines and the Dagster console log
go to JOURNEY_HOME/logs/demo.log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    home = tmp_path_factory.mktemp("demo_cli")
    env = {
        **os.environ,
        "JOURNEY_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "COLUMNS": "160",
    }
    env.pop("JOURNEY_PROFILE", None)
    done = subprocess.run(
        [sys.executable, "-m", "journey_pipeline.cli", "demo", "--days", "1", "--contacts", "200"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return home, done


def test_stdout_is_the_json_summary_alone(demo_run) -> None:
    home, done = demo_run
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, done.stdout[:2000]
    summary = json.loads(lines[0])
    assert summary["days"] == 1 and summary["contacts"] == 200
    assert summary["per_day"][0]["events"] > 0
    assert Path(summary["report"]) == home / "reports" / "demo.html"
    assert Path(summary["report"]).stat().st_size > 0


def test_terminal_shows_tables_and_the_log_file_holds_the_runs(demo_run) -> None:
    home, done = demo_run
    log = home / "logs" / "demo.log"
    assert f"run logs: {log}" in done.stderr.replace("\n", "")
    assert "journey demo: 1 days, 200 contacts" in done.stderr
    assert "incremental margin against no_offer" in done.stderr
    # dbt's node lines and the INFO console log of the runs are in the file, not the terminal.
    assert "Running with dbt" not in done.stderr
    assert " - dagster - INFO - " not in done.stderr
    # Library warnings are written to the log too; only the development PII key is announced.
    assert "DeprecationWarning" not in done.stderr
    assert "Running with dbt" in log.read_text(encoding="utf-8")
