"""``simulate``: load-or-create under JOURNEY_HOME, continue across calls, report."""

from __future__ import annotations

from datetime import date

from conftest import read_events

from journey_pipeline.settings import load_settings
from journey_pipeline.sim.crm import LocalCrmStore
from journey_pipeline.sim.run import simulate
from journey_pipeline.sim.world import World


def test_simulate_twice_continues_from_the_last_day(settings):
    seen = []
    first = simulate(settings, days=2, contacts=500, seed=4, progress=seen.append)
    assert first["first_date"] == "2026-01-01" and first["last_date"] == "2026-01-02"
    assert first["days_simulated"] == 2 and not first["resumed"]
    assert [r.date for r in seen] == [date(2026, 1, 1), date(2026, 1, 2)]
    assert first["events"]["contact.created"] >= 500
    assert first["events_total"] == sum(len(read_events(r.events_path)) for r in seen)

    second = simulate(load_settings(), days=2, contacts=999, seed=99)  # a new process, in effect
    assert second["resumed"]
    assert (second["first_date"], second["last_date"]) == ("2026-01-03", "2026-01-04")
    assert second["seed"] == 4  # the saved world keeps its own parameters
    names = sorted(p.name for p in settings.landing_dir.glob("*.jsonl"))
    assert names == [f"events-2026-01-0{d}.jsonl" for d in range(1, 5)]
    assert World.load(settings.sim_state_dir).current_date == date(2026, 1, 5)
    with LocalCrmStore(settings.crm_path) as crm:
        assert crm.count_contacts() == second["contacts"]


def test_simulate_equals_one_uninterrupted_run(settings, tmp_path):
    simulate(settings, days=1, contacts=400, seed=2, start_date=date(2026, 2, 1))
    simulate(settings, days=2)
    world = World.create(400, 2, date(2026, 2, 1))
    with LocalCrmStore(tmp_path / "crm.db") as crm:
        files = [world.step(crm, tmp_path / "landing").events_path for _ in range(3)]
    for f in files:
        assert (settings.landing_dir / f.name).read_bytes() == f.read_bytes()


def test_simulate_with_debezium_and_drift(settings):
    summary = simulate(settings, days=2, contacts=300, seed=1, drift_day=1, debezium=True)
    assert summary["drift_day"] == 1
    lines = read_events(settings.landing_dir / "events-2026-01-01.jsonl")
    assert any(e.get("op") == "c" for e in lines)
    assert not any(e.get("type", "").startswith("contact.") for e in lines)


def test_task_cutoff_applies_tasks_stamped_with_wall_clock_time(settings):
    simulate(settings, days=1, contacts=300, seed=6)
    with LocalCrmStore(settings.crm_path) as crm:
        crm.create_task("d-live", "C-0000007", "offer_b", "2026-11-28T11:00:00.123456+00:00")
    assert simulate(settings, days=1)["tasks_applied"] == 0
    summary = simulate(settings, days=1, task_cutoff="9999-12-31")
    assert summary["tasks_applied"] == 1
    with LocalCrmStore(settings.crm_path) as crm:
        assert crm.task_status("d-live") == "applied"
