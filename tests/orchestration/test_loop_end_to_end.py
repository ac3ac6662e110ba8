"""The whole loop on a small simulated world, through Dagster, the way `journey demo` runs it.

Three simulated days: events land, features are built and served, decisions are taken,
written to the local CRM exactly once, applied by the simulator, and outcomes flow back.
Re-running a day adds nothing twice. The demo's HTML report shows what the run stored, and
dbt re-uses its partial parse from one day to the next.
"""

import base64
import json
import re
import shutil
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
    # A weekly-style retrain on the last day, so the report has a retrain to mark.
    summary = run_demo(settings, days=3, contacts=600, seed=3, retrain_every=3)
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


def _realised_from_outcomes(con) -> dict[str, float]:
    """Cumulative realised incremental margin per decision date, computed here from
    learn.outcomes: policy rewards minus policy decisions x the pooled holdout mean."""
    rows = con.execute(
        "SELECT decision_date, sum(reward) FILTER (WHERE NOT holdout), "
        "count(*) FILTER (WHERE NOT holdout), sum(reward) FILTER (WHERE holdout), "
        "count(*) FILTER (WHERE holdout) FROM learn.outcomes "
        "WHERE matured AND reward IS NOT NULL GROUP BY 1 ORDER BY 1"
    ).fetchall()
    out, p_sum, p_n, h_sum, h_n = {}, 0.0, 0, 0.0, 0
    for day, p_reward, p_count, h_reward, h_count in rows:
        p_sum, p_n = p_sum + (p_reward or 0.0), p_n + p_count
        h_sum, h_n = h_sum + (h_reward or 0.0), h_n + h_count
        out[str(day)] = p_sum - p_n * (h_sum / h_n) if h_n else None
    return out


def _check_report(settings, instance) -> dict:
    """Every figure of the report at settings' home against the stored results."""
    import pandas as pd

    from journey_pipeline.demo_report import read_report_data

    path = settings.reports_dir / "demo.html"
    text = path.read_text(encoding="utf-8")
    # Self-contained: no script, stylesheet or image fetched from anywhere.
    assert not re.search(r"<(script|img|link)[^>]+(src|href)=['\"]?(https?:)?//", text)
    images = re.findall(r"src='data:image/png;base64,([^']+)'", text)
    assert images and all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    data = read_report_data(path)

    with warehouse(settings.warehouse_path, read_only=True) as con:
        by_action: dict = {}
        for day, action, n in con.execute(
            "SELECT decision_date, action, count(*) FROM decide.decision_log "
            "WHERE mode = 'live' GROUP BY ALL"
        ).fetchall():
            by_action.setdefault(str(day), {})[action] = n
        models = dict(
            con.execute(
                "SELECT decision_date::VARCHAR, coalesce(mode(model_version), 'cold start') "
                "FROM decide.decision_log WHERE mode = 'live' GROUP BY 1"
            ).fetchall()
        )
        evaluable = con.execute(
            "SELECT count(*) FROM decide.decision_log WHERE mode = 'live' AND NOT holdout"
        ).fetchone()[0]
        realised = _realised_from_outcomes(con)
    assert data["decisions_by_action"] == by_action
    assert data["champion_by_day"] == models

    expected = data["expected"]
    assert expected["decisions"] == evaluable
    cum_policy = expected["cumulative"]["policy"]
    assert cum_policy[max(cum_policy)] == pytest.approx(expected["incremental"]["policy"])
    assert expected["incremental"]["oracle"] >= max(expected["incremental"].values()) - 1e-9
    got = data["realised"].get("cumulative") or {}
    assert set(got) == set(realised)
    for day, value in realised.items():
        assert (got[day] is None) == (value is None)
        if value is not None:
            assert got[day] == pytest.approx(value, rel=1e-9, abs=1e-9)

    drift = pd.read_parquet(settings.reports_dir / "drift_history.parquet")
    assert [d["feature_date"] for d in data["drift"]] == sorted(drift["current_window"])
    shares = dict(zip(drift["current_window"], drift["drift_share"], strict=True))
    for d in data["drift"]:
        stored = shares[d["feature_date"]]
        assert (d["drift_share"] is None) == pd.isna(stored)
        if d["drift_share"] is not None:
            assert d["drift_share"] == pytest.approx(stored)

    import dagster as dg

    runs = instance.get_run_records(dg.RunsFilter(job_name="retrain_job"))
    assert sorted(r["run_id"] for r in data["retrains"]) == sorted(
        r.dagster_run.run_id for r in runs
    )
    scoreboard = json.loads(
        pd.read_parquet(settings.reports_dir / "scoreboard.parquet").to_json(orient="records")
    )
    assert data["scoreboard"] == scoreboard

    probes = pd.read_parquet(settings.reports_dir / "decision_latency.parquet")
    latency = data["decision_latency"]
    assert latency["ms"] == probes.sort_values("probe")["ms"].tolist()
    assert latency["p99_ms"] == pytest.approx(probes["ms"].quantile(0.99))
    assert latency["probes"] == len(probes) > 0
    assert len(images) >= 4  # decisions, drift, latency and the oracle plots at least
    return data


def test_the_demo_report_shows_what_the_run_stored(loop):
    settings, summary = loop
    from journey_pipeline.instance import dagster_instance

    assert summary["report"] == str(settings.reports_dir / "demo.html")
    data = _check_report(settings, dagster_instance(settings))
    # The printed comparison is the report's.
    assert summary["margins"] == data["margins"]
    weekly = data["expected"]["weekly"]
    assert summary["weekly"] == weekly and weekly
    assert sum(w["decisions"] for w in weekly) == data["expected"]["decisions"]
    assert "Week by week" in Path(summary["report"]).read_text(encoding="utf-8")
    names = [row["policy"] for row in data["margins"]]
    assert names[:3] == ["policy (expected)", "oracle", "uniform random"]
    assert names[3].startswith("best static")
    retrain = [r for r in data["retrains"] if r["demo_day"]]
    assert [(r["demo_day"], r["trigger"], r["status"]) for r in retrain] == [
        ("2026-01-03", "weekly", "SUCCESS")
    ]


def test_the_report_shows_realised_margins_once_outcomes_mature(loop, tmp_path):
    """A copy of the run whose outcomes use a one-day window, so days 1-2 have matured: the
    report's realised curve is the one computed from learn.outcomes."""
    settings, _ = loop
    from journey_pipeline.demo_report import write_demo_report
    from journey_pipeline.instance import dagster_instance
    from journey_pipeline.learn.outcomes import build_outcomes
    from journey_pipeline.settings import load_settings

    home = tmp_path / "home"
    shutil.copytree(settings.home, home, ignore=shutil.ignore_patterns("dagster", "dbt"))
    mp = pytest.MonkeyPatch()
    mp.setenv("JOURNEY_HOME", str(home))
    try:
        copy = load_settings()
        from datetime import datetime

        with warehouse(copy.warehouse_path) as con:
            build_outcomes(con, "2026-01-01", "2026-01-04", 1, as_of=datetime(2026, 1, 4))
            matured = con.execute("SELECT count(*) FROM learn.outcomes WHERE matured").fetchone()
        assert matured[0] > 0
        path, data = write_demo_report(copy, dagster_instance(settings))
        assert path == copy.reports_dir / "demo.html"
        checked = _check_report(copy, dagster_instance(settings))
        assert checked["realised"]["cumulative"]
        assert data["margins"][-1]["policy"] == "policy vs holdout (realised)"
    finally:
        mp.undo()


def test_dbt_reuses_its_partial_parse_from_day_to_day(loop):
    """The feature window reaches dbt through the environment, so after the first day dbt
    finds nothing to re-parse."""
    settings, _ = loop
    log = settings.home / "dbt" / "target" / "dbt.log"
    invocations: dict[str, bool] = {}
    for line in log.read_text(encoding="utf-8").splitlines():
        info = json.loads(line)["info"]
        full_parse = info["name"] == "UnableToPartialParse"
        invocation = info["invocation_id"]
        invocations[invocation] = invocations.get(invocation, False) or full_parse
    assert len(invocations) >= 3
    assert not any(list(invocations.values())[1:])
