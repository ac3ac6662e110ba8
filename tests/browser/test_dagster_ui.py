"""The Dagster UI as a user first meets it: the loop's graph, its runs, and a backfill that finishes.

Drives a real `dagster dev` on loopback with Debian's headless Chromium through Selenium, and
the webserver's GraphQL API for the backfill. Screenshots land in tests/artifacts/.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from dagster_ui import (
    DagsterDevServer,
    browser_skip_reason,
    dagster_env,
    dismiss_welcome_dialog,
    graph_node_positions,
    headless_chromium,
    launch_job_backfill,
    prepare_dagster_home,
    save_screenshot,
    sensor_ticks,
    stop_sensor,
    wait_for_backfill,
    wait_for_sensor_run,
    wait_for_text,
)
from site_setup import (
    ARTIFACTS_DIR,
    LANDING_SENSOR,
    SIMULATED_DAYS,
    DagsterSite,
    run_ingest_partition,
    simulate_world,
)

SKIP_REASON = browser_skip_reason()

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or ""),
]

STAGES = ("observe", "features", "decide", "act", "learn")
ASSET_GRAPH_PATH = "/asset-groups"  # "Global asset lineage" in Dagster 1.13
# Bounds, not expectations: the code location imports dbt, Feast and MLflow, and every run
# process imports it again (and re-parses the dbt project under `dagster dev`), so a busy
# two-core machine needs minutes where an idle one needs a fraction.
SERVER_LOAD_TIMEOUT = float(os.environ.get("JOURNEY_BROWSER_TEST_LOAD_TIMEOUT", "180"))
BACKFILL_TIMEOUT = float(os.environ.get("JOURNEY_BROWSER_TEST_BACKFILL_TIMEOUT", "300"))
# The drift sensor ticks once a minute; its run then starts a process that imports the project.
SENSOR_RUN_TIMEOUT = float(os.environ.get("JOURNEY_BROWSER_TEST_SENSOR_TIMEOUT", "420"))
DRIFT_SENSOR = "drift_retrain_sensor"


@pytest.fixture(scope="module")
def dagster_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterSite]:
    """Two simulated days of 300 contacts, one finished ingest run, `dagster dev` serving both.

    The landing sensor is on by default and would queue ingest runs of its own ahead of the
    backfill on the one-slot warehouse pool, so the webserver starts over an empty landing
    directory, the sensor is switched off through GraphQL, and only then do the simulated
    files land. The seed run ingests the same files from the simulator's own home while the
    webserver loads (both import the whole project, the slow part) and records its run in
    the site's DAGSTER_HOME. The process group is always terminated afterwards.
    """
    root = tmp_path_factory.mktemp("dagster_site")
    journey_home = root / "journey_home"
    (journey_home / "landing").mkdir(parents=True)
    dagster_home = prepare_dagster_home(root / "dagster_home")
    env = dagster_env(journey_home, dagster_home)
    simulated_home = root / "simulated_home"
    landing_files = simulate_world(simulated_home, env)

    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    with DagsterDevServer(env, log_path=ARTIFACTS_DIR / "dagster_dev.log") as server:
        seeded_run_id = run_ingest_partition(
            {**env, "JOURNEY_HOME": str(simulated_home)},
            SIMULATED_DAYS[0],
            ARTIFACTS_DIR / "seed_run.log",
        )
        repository = server.wait_until_loaded(timeout=SERVER_LOAD_TIMEOUT)
        assert stop_sensor(server.client, repository, LANDING_SENSOR) == "STOPPED"
        for landing_file in landing_files:
            shutil.copy2(landing_file, journey_home / "landing" / landing_file.name)
        yield DagsterSite(server, journey_home, dagster_home, simulated_home, seeded_run_id)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium with a fresh profile for the module's pages."""
    with headless_chromium(tmp_path_factory.mktemp("chromium_profile")) as driver:
        yield driver


def assert_png(path: Path) -> None:
    """The file is a non-empty PNG image."""
    data = path.read_bytes()
    assert len(data) > 1000, f"{path} is only {len(data)} bytes"
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), f"{path} is not a PNG"


@contextlib.contextmanager
def screenshot_when_done(driver: Any, name: str) -> Iterator[Path]:
    """Yield the screenshot's path and save it on the way out, whether the checks passed or
    not, so a failure leaves the page it saw in tests/artifacts/."""
    path = ARTIFACTS_DIR / name
    try:
        yield path
    except BaseException:
        # Keep the check's own failure as the error; the screenshot is only a witness.
        with contextlib.suppress(Exception):
            save_screenshot(driver, path)
        raise
    dismiss_welcome_dialog(driver)
    save_screenshot(driver, path)


def events_by_day(warehouse: Path) -> dict[str, int]:
    """Rows of raw.events per event date (YYYY-MM-DD) in a warehouse file."""
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.execute(
            "SELECT strftime(event_date, '%Y-%m-%d'), count(*) FROM raw.events GROUP BY 1"
        ).fetchall()
    return dict(rows)


def test_asset_graph_shows_the_five_stages_in_loop_order(dagster_site: DagsterSite, browser):
    browser.get(dagster_site.server.base_url + ASSET_GRAPH_PATH)
    with screenshot_when_done(browser, "asset_graph.png") as screenshot:
        wait_for_text(browser, ["Global asset lineage", *STAGES])
        dismiss_welcome_dialog(browser)
        positions = graph_node_positions(browser, expected=len(STAGES))

        assert set(positions) == set(STAGES), positions
        # Left to right the graph reads as the loop: observe, features, decide, act, learn.
        assert sorted(STAGES, key=positions.__getitem__) == list(STAGES), positions
    assert_png(screenshot)


def test_runs_page_lists_the_seeded_run(dagster_site: DagsterSite, browser):
    browser.get(dagster_site.server.base_url + "/runs")
    with screenshot_when_done(browser, "runs.png") as screenshot:
        short_id = dagster_site.seeded_run_id[:8]  # the runs table shows ids shortened
        page = wait_for_text(browser, [short_id, "ingest_landing_job", "Success"])

        assert f"partition: {SIMULATED_DAYS[0]}" in page
    assert_png(screenshot)


def test_backfill_of_two_days_through_graphql_completes(dagster_site: DagsterSite, browser):
    server = dagster_site.server
    backfill_id = launch_job_backfill(
        server.client, server.repository, "ingest_landing_job", SIMULATED_DAYS
    )

    outcome = wait_for_backfill(server.client, backfill_id, timeout=BACKFILL_TIMEOUT)

    assert outcome.status in {"COMPLETED", "COMPLETED_SUCCESS"}, outcome
    assert sorted(outcome.partitions) == list(SIMULATED_DAYS)
    by_partition = {run.partition: run.status for run in outcome.runs}
    assert by_partition == dict.fromkeys(SIMULATED_DAYS, "SUCCESS"), outcome.runs

    # The runs really ingested the landed files: both days are in the site's warehouse, and
    # the first day matches what the seed run ingested from the same file.
    ingested = events_by_day(dagster_site.journey_home / "warehouse.duckdb")
    assert all(ingested.get(day, 0) > 0 for day in SIMULATED_DAYS), ingested
    seeded = events_by_day(dagster_site.simulated_home / "warehouse.duckdb")
    assert ingested[SIMULATED_DAYS[0]] == seeded[SIMULATED_DAYS[0]], (ingested, seeded)

    browser.get(f"{server.base_url}/runs/b/{backfill_id}")
    with screenshot_when_done(browser, "backfill.png") as screenshot:
        wait_for_text(browser, ["ingest_landing_job", "2 partitions", "100% completed"])
    assert_png(screenshot)


def wait_for_tick(site: DagsterSite, sensor: str, reason: str, timeout: float) -> None:
    """Poll until the daemon has recorded a tick of ``sensor`` skipped for ``reason``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ticks = sensor_ticks(site.server.client, site.server.repository, sensor)
        if any(t.status == "SKIPPED" and reason in (t.skip_reason or "") for t in ticks):
            return
        time.sleep(3.0)
    raise AssertionError(f"no tick of {sensor} skipped for {reason!r} in {timeout:.0f}s: {ticks}")


def test_drift_sensor_ticks_and_the_retrain_it_launched_are_visible(
    dagster_site: DagsterSite, browser
):
    """The daemon evaluates drift_retrain_sensor; a drift report at the threshold makes its
    next tick launch retrain_job once, and the sensor's page shows the ticks and the run."""
    from journey_pipeline.learn.analysis import append_drift_history
    from journey_pipeline.learn.drift import DriftResult

    server = dagster_site.server
    wait_for_tick(dagster_site, DRIFT_SENSOR, "no drift report yet", SENSOR_RUN_TIMEOUT)
    day = SIMULATED_DAYS[1]
    # What the drift_report asset appends when half the compared features drifted.
    append_drift_history(
        dagster_site.journey_home / "reports" / "drift_history.parquet",
        {
            "current_window": day,
            "reference_window": "2025-12-27..2025-12-31",
            "features": ["product_views_7d", "cart_abandons_14d"],
        },
        DriftResult(
            drift_share=0.5,
            per_column={"product_views_7d": 0.21, "cart_abandons_14d": 0.02},
            drifted_columns=["product_views_7d"],
            html_path=None,
        ),
    )

    run = wait_for_sensor_run(server.client, DRIFT_SENSOR, timeout=SENSOR_RUN_TIMEOUT)

    assert run["jobName"] == "retrain_job" and run["status"] == "SUCCESS", run
    assert run["tags"]["journey/trigger"] == "drift"
    assert run["tags"]["dagster/run_key"] == f"drift:{day}"
    ticks = sensor_ticks(server.client, server.repository, DRIFT_SENSOR)
    launching = [t for t in ticks if run["runId"] in t.run_ids]
    assert len(launching) == 1 and launching[0].run_keys == (f"drift:{day}",), ticks
    # The ticks after it see the same report and launch nothing (cooldown, one run key).
    wait_for_tick(dagster_site, DRIFT_SENSOR, "cooling down since " + day, SENSOR_RUN_TIMEOUT)
    assert (
        len([t for t in sensor_ticks(server.client, server.repository, DRIFT_SENSOR) if t.run_ids])
        == 1
    )

    repository = server.repository
    browser.get(
        f"{server.base_url}/locations/{repository.repository_name}@"
        f"{repository.location_name}/sensors/{DRIFT_SENSOR}"
    )
    with screenshot_when_done(browser, "drift_sensor.png") as screenshot:
        wait_for_text(browser, [DRIFT_SENSOR, "retrain_job", run["runId"][:8]])
    assert_png(screenshot)
