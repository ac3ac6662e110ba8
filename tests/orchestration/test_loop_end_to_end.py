"""The whole loop on a small simulated world, through Dagster, the way `journey demo` runs it.

Three simulated days: events land, features are built and served, decisions are taken,
written to the local CRM exactly once, applied by the simulator, and outcomes flow back.
Re-running a day adds nothing twice.
"""

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from journey_pipeline.warehouse import warehouse

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    home = tmp_path_factory.mktemp("loop") / "home"
    mp = pytest.MonkeyPatch()
    mp.setenv("JOURNEY_HOME", str(home))
    mp.setenv("DAGSTER_HOME", str(home / "dagster"))
    from journey_pipeline.demo import run_demo
    from journey_pipeline.settings import load_settings

    settings = load_settings()
    settings.ensure_dirs()
    summary = run_demo(settings, days=3, contacts=600, seed=3, retrain_every=0)
    yield settings, summary
    mp.undo()


def test_every_day_ran_and_decided(loop):
    settings, summary = loop
    assert [r["day"] for r in summary["per_day"]] == ["2026-01-01", "2026-01-02", "2026-01-03"]
    assert all(r["events"] > 0 for r in summary["per_day"])
    # Features as of each day's close are online and match the offline rows.
    assert all(r["parity"] == "pass" for r in summary["per_day"])
    assert all(r["feature_freshness_hours"] == 0 for r in summary["per_day"])
    assert all(r["feature_contacts"] >= 600 for r in summary["per_day"])
    assert summary["totals"]["decisions"] > 0
    with warehouse(settings.warehouse_path, read_only=True) as con:
        live = con.execute(
            "SELECT count(*), count(DISTINCT decision_id), min(propensity), max(propensity) "
            "FROM decide.decision_log WHERE mode = 'live'"
        ).fetchone()
        assert live[0] == live[1] == summary["totals"]["decisions"]
        assert 0 < live[2] <= live[3] <= 1
        offers = con.execute(
            "SELECT decision_id FROM decide.decision_log WHERE mode = 'live' "
            "AND action <> 'no_offer' ORDER BY 1"
        ).fetchall()
        outcomes = con.execute("SELECT count(*) FROM learn.outcomes").fetchone()[0]
    assert outcomes == summary["totals"]["decisions"]
    crm = sqlite3.connect(settings.crm_path)
    tasks = crm.execute("SELECT decision_id, status FROM tasks ORDER BY 1").fetchall()
    # Exactly one CRM task per live offer; the first two days' tasks were applied by the world.
    assert [t[0] for t in tasks] == [o[0] for o in offers]
    assert {status for _, status in tasks} <= {"open", "applied", "skipped"}
    assert any(status == "applied" for _, status in tasks)


def test_rerunning_a_day_duplicates_nothing(loop):
    settings, summary = loop
    from journey_pipeline.definitions import defs
    from journey_pipeline.instance import dagster_instance

    with warehouse(settings.warehouse_path, read_only=True) as con:
        before = con.execute(
            "SELECT (SELECT count(*) FROM raw.events), (SELECT count(*) FROM decide.decision_log)"
        ).fetchone()
    result = defs.get_job_def("daily_loop_job").execute_in_process(
        instance=dagster_instance(settings), partition_key="2026-01-02"
    )
    assert result.success
    with warehouse(settings.warehouse_path, read_only=True) as con:
        after = con.execute(
            "SELECT (SELECT count(*) FROM raw.events), (SELECT count(*) FROM decide.decision_log)"
        ).fetchone()
    assert after == before
    crm = sqlite3.connect(settings.crm_path)
    assert (
        crm.execute("SELECT count(*), count(DISTINCT decision_id) FROM tasks").fetchone()[0]
        == (summary["totals"]["crm_tasks_confirmed"])
    )


def test_no_raw_email_reached_the_warehouse(loop):
    settings, _ = loop
    from journey_pipeline.observe.quality import raw_email_hits

    with warehouse(settings.warehouse_path, read_only=True) as con:
        assert raw_email_hits(con) == {}
    crm = sqlite3.connect(settings.crm_path)
    emails = [r[0] for r in crm.execute("SELECT email FROM contacts WHERE email IS NOT NULL")]
    assert emails, "the simulator's CRM holds raw emails, as a real CRM would"
    data = settings.warehouse_path.read_bytes()
    assert not any(e.encode() in data for e in emails[:200])


def test_dagster_cli_materializes_the_observe_asset(tmp_path):
    env = {
        **__import__("os").environ,
        "JOURNEY_HOME": str(tmp_path / "cli_home"),
        "DAGSTER_HOME": str(tmp_path / "cli_dagster"),
    }
    (tmp_path / "cli_dagster").mkdir()
    bin_dir = Path(sys.executable).parent
    sim = subprocess.run(
        [str(bin_dir / "journey"), "simulate", "--days", "1", "--contacts", "200"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert sim.returncode == 0, sim.stderr[-2000:]
    run = subprocess.run(
        [
            str(bin_dir / "dagster"),
            "asset",
            "materialize",
            "-m",
            "journey_pipeline.definitions",
            "--select",
            "raw_events",
            "--partition",
            "2026-01-01",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    with warehouse(tmp_path / "cli_home" / "warehouse.duckdb", read_only=True) as con:
        assert con.execute("SELECT count(*) FROM raw.events").fetchone()[0] > 200


def test_a_partition_range_backfill_rebuilds_exactly_its_feature_days(loop):
    import os

    settings, _ = loop

    def built_at() -> dict:
        with warehouse(settings.warehouse_path, read_only=True) as con:
            rows = con.execute(
                "SELECT feature_date, max(created_ts) FROM contact_features_daily GROUP BY 1"
            ).fetchall()
        return {str(day): stamp for day, stamp in rows}

    before = built_at()
    env = {
        **os.environ,
        "JOURNEY_HOME": str(settings.home),
        "DAGSTER_HOME": str(settings.home / "dagster"),
    }
    run = subprocess.run(
        [
            str(Path(sys.executable).with_name("dagster")),
            "asset",
            "materialize",
            "-m",
            "journey_pipeline.definitions",
            "--select",
            "contact_features_daily",
            "--partition-range",
            "2026-01-01...2026-01-02",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    after = built_at()
    # Event days 01-01 and 01-02 are feature dates 01-02 and 01-03; 01-04 stays as it was.
    assert {d for d in after if after[d] != before[d]} == {"2026-01-02", "2026-01-03"}
    assert after["2026-01-04"] == before["2026-01-04"]
