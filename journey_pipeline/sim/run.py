"""Run the simulator against the project's stores: the world's state lives under
``Settings.sim_state_dir``, the CRM in ``Settings.crm_path`` and the day files in
``Settings.landing_dir``, so ``journey simulate --days 3`` run twice simulates six
consecutive days.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta

from journey_pipeline.partitions import START_DATE
from journey_pipeline.settings import Settings
from journey_pipeline.sim.crm import LocalCrmStore
from journey_pipeline.sim.world import DayReport, World

DEFAULT_CONTACTS = 5_000
DEFAULT_SEED = 0


def load_or_create_world(
    settings: Settings,
    contacts: int = DEFAULT_CONTACTS,
    seed: int = DEFAULT_SEED,
    start_date: date | None = None,
    drift_day: int | None = None,
) -> tuple[World, bool]:
    """The saved world under ``settings.sim_state_dir`` if there is one, else a new world
    with these parameters. Out: (world, resumed); a resumed world keeps its own size, seed,
    start and drift day."""
    if World.exists(settings.sim_state_dir):
        return World.load(settings.sim_state_dir), True
    start = start_date or date.fromisoformat(START_DATE)
    return World.create(contacts, seed, start, drift_day=drift_day), False


def simulate(
    settings: Settings,
    days: int,
    contacts: int = DEFAULT_CONTACTS,
    seed: int = DEFAULT_SEED,
    start_date: date | None = None,
    drift_day: int | None = None,
    debezium: bool = False,
    progress: Callable[[DayReport], None] | None = None,
    task_cutoff: str | None = None,
) -> dict:
    """Simulate ``days`` more days of the world under ``settings`` (created on first use),
    saving its state after every day so an interrupted run resumes where it stopped.

    In: the settings (paths), the number of days, and for a new world its size, seed, first
    date (default ``partitions.START_DATE``) and drift day; ``debezium`` writes contact
    changes as Debezium envelopes; ``progress`` is called with each day's report;
    ``task_cutoff`` overrides which open CRM tasks a day applies (default: those created
    before the end of the simulated day, see :meth:`World.step`).
    Out: a JSON-ready summary: days simulated, first and last date, events by type, files
    written, live contacts, tasks applied, whether an existing world was resumed.
    """
    if days < 0:
        raise ValueError("days must be >= 0")
    settings.ensure_dirs()
    world, resumed = load_or_create_world(settings, contacts, seed, start_date, drift_day)
    events: dict[str, int] = {}
    files: list[str] = []
    applied = skipped = triggers = 0
    first = world.current_date
    with LocalCrmStore(settings.crm_path) as crm:
        for _ in range(days):
            report = world.step(
                crm, settings.landing_dir, debezium=debezium, task_cutoff=task_cutoff
            )
            world.save(settings.sim_state_dir)
            for name, n in report.counts.items():
                events[name] = events.get(name, 0) + n
            files.append(str(report.events_path))
            applied += report.tasks_applied
            skipped += report.tasks_skipped
            triggers += report.triggers
            if progress is not None:
                progress(report)
    return {
        "days_simulated": days,
        "first_date": first.isoformat() if days else None,
        "last_date": (world.current_date - timedelta(days=1)).isoformat() if days else None,
        "next_date": world.current_date.isoformat(),
        "events": dict(sorted(events.items())),
        "events_total": sum(events.values()),
        "files": files,
        "contacts": int(world.contacts["alive"].sum()),
        "contacts_ever": world.n_contacts,
        "tasks_applied": applied,
        "tasks_skipped": skipped,
        "decision_triggers": triggers,
        "seed": world.seed,
        "drift_day": world.drift_day,
        "resumed": resumed,
        "state_dir": str(settings.sim_state_dir),
        "crm_path": str(settings.crm_path),
        "landing_dir": str(settings.landing_dir),
    }
