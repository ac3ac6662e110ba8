"""The browser test's pure helpers on their own: no webserver, no browser, milliseconds each."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster_ui
import pytest
from dagster_ui import (
    DagsterDevServer,
    DagsterUIError,
    RepositorySelector,
    browser_skip_reason,
    dagster_env,
    free_port,
    prepare_dagster_home,
    process_group_alive,
)
from site_setup import run_id_of_success

RUN_LOG = """\
2026-11-28 11:41:20 +0000 - dagster - DEBUG - ingest_landing_job - 8dc0970c-1509-4922-becb-1512cc2d5d04 - 31867 - raw_events - STEP_SUCCESS - Finished execution of step "raw_events".
2026-11-28 11:41:24 +0000 - dagster - DEBUG - ingest_landing_job - 8dc0970c-1509-4922-becb-1512cc2d5d04 - 31867 - RUN_SUCCESS - Finished execution of run for "ingest_landing_job".
"""


def test_run_id_is_read_from_the_run_success_line():
    assert run_id_of_success(RUN_LOG) == "8dc0970c-1509-4922-becb-1512cc2d5d04"


def test_a_log_without_run_success_is_an_error():
    with pytest.raises(DagsterUIError, match="RUN_SUCCESS"):
        run_id_of_success(RUN_LOG.splitlines()[0])


def test_skip_reason_names_the_missing_browser(monkeypatch, tmp_path):
    monkeypatch.setattr(dagster_ui, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setitem(sys.modules, "selenium", sys.modules.get("selenium") or object())
    reason = browser_skip_reason()
    assert reason is not None and "apt-get install chromium" in reason


def test_skip_reason_names_missing_selenium(monkeypatch):
    monkeypatch.setitem(sys.modules, "selenium", None)  # makes `import selenium` fail
    reason = browser_skip_reason()
    assert reason is not None and "pip install selenium" in reason


def test_site_environment_points_at_its_homes_and_the_virtualenv(tmp_path, monkeypatch):
    monkeypatch.setenv("JOURNEY_PROFILE", "production")
    env = dagster_env(tmp_path / "journey", tmp_path / "dagster")
    assert env["JOURNEY_HOME"] == str(tmp_path / "journey")
    assert env["DAGSTER_HOME"] == str(tmp_path / "dagster")
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert "JOURNEY_PROFILE" not in env


def test_dagster_home_gets_the_repository_instance_config(tmp_path):
    home = prepare_dagster_home(tmp_path / "dagster_home")
    config = (home / "dagster.yaml").read_text()
    assert config == (dagster_ui.REPO_ROOT / "dagster.yaml").read_text()


def test_free_port_is_bindable():
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_repository_selector_speaks_graphql():
    selector = RepositorySelector("journey_pipeline.definitions", "__repository__")
    assert selector.as_graphql() == {
        "repositoryLocationName": "journey_pipeline.definitions",
        "repositoryName": "__repository__",
    }


def test_stopping_the_server_ends_its_whole_process_group(tmp_path):
    # A stand-in for `dagster dev`: a leader that ignores SIGTERM, like `dagster dev` winding
    # down slowly, with a child of its own, in a new session as DagsterDevServer starts it.
    server = DagsterDevServer(env=os.environ, log_path=tmp_path / "server.log")
    server.process = subprocess.Popen(
        ["bash", "-c", "trap '' TERM; sleep 300 & wait"], start_new_session=True
    )
    pgid = server.process.pid
    assert process_group_alive(pgid)

    server.stop(grace=1.0)

    assert server.process.poll() is not None
    assert not process_group_alive(pgid)
