"""Benchmark: simulate one day of the customer world.

Measures a steady-state day (after the day-0 sync of the population into the CRM, with the
decisions of the previous day's triggers applied) at 100,000 contacts, including the CRM
update and writing the day's JSONL. Baseline, measured in the same run: orjson-dumping the
same number of already-built event dicts to a file, the floor for any writer of these
events. Prints the ratio and the absolute figures; returns them as a dict.

    .venv/bin/python bench/bench_sim.py            # 100,000 contacts
    .venv/bin/python bench/bench_sim.py --quick    # 10,000 contacts, a smoke run
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from datetime import date
from pathlib import Path

import orjson

from journey_pipeline.sim.crm import LocalCrmStore
from journey_pipeline.sim.world import World

ACTIONS_CYCLE = ("no_offer", "offer_a", "offer_b")


def _decide_on_triggers(crm: LocalCrmStore, day_file: Path, created_at: str) -> int:
    """One task per cart abandoner of the day, as the act stage would insert them."""
    rows = []
    for line in day_file.read_bytes().splitlines():
        event = orjson.loads(line)
        if event["type"] == "cart.abandoned":
            action = ACTIONS_CYCLE[len(rows) % 3]
            rows.append((f"bench-{event['event_id']}", event["payload"]["contact_id"], action))
    with crm.connection as con:
        con.executemany(
            "INSERT INTO tasks (decision_id, contact_id, action, status, created_at) "
            "VALUES (?, ?, ?, 'open', ?)",
            [(*row, created_at) for row in rows],
        )
    return len(rows)


def _baseline_dump(events: list[dict], path: Path) -> float:
    """Seconds to orjson-dump ``events`` one per line to ``path``."""
    start = time.perf_counter()
    with open(path, "wb") as fh:
        fh.write(b"\n".join(orjson.dumps(e) for e in events))
        fh.write(b"\n")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark. In: command-line arguments (``--quick``, ``--contacts N``,
    ``--seed S``). Out: the figures printed, as a dict."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 contacts, a smoke run")
    parser.add_argument("--contacts", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    contacts = args.contacts or (10_000 if args.quick else 100_000)

    with tempfile.TemporaryDirectory(prefix="bench_sim_") as tmp:
        home = Path(tmp)
        start = time.perf_counter()
        world = World.create(contacts, args.seed, date(2026, 1, 1))
        create_s = time.perf_counter() - start
        with LocalCrmStore(home / "crm.db") as crm:
            start = time.perf_counter()
            first = world.step(crm, home / "landing")
            first_day_s = time.perf_counter() - start
            tasks = _decide_on_triggers(crm, first.events_path, "2026-01-01T23:00:00Z")

            start = time.perf_counter()
            day = world.step(crm, home / "landing")
            day_s = time.perf_counter() - start

        events = [orjson.loads(line) for line in day.events_path.read_bytes().splitlines()]
        baseline_s = min(_baseline_dump(events, home / f"baseline-{k}.jsonl") for k in range(3))
        state_bytes = sum(a.nbytes for a in world.contacts.values()) + world.win_hazard.nbytes

    n_events = len(events)
    result = {
        "contacts": contacts,
        "events": n_events,
        "tasks_applied": day.tasks_applied,
        "tasks_inserted": tasks,
        "sim_day_seconds": round(day_s, 3),
        "sim_events_per_second": round(n_events / day_s),
        "baseline_dump_seconds": round(baseline_s, 4),
        "baseline_events_per_second": round(n_events / baseline_s),
        "ratio_sim_over_baseline_seconds": round(day_s / baseline_s, 2),
        "first_day_seconds": round(first_day_s, 3),
        "first_day_events": first.n_events,
        "create_seconds": round(create_s, 3),
        "state_bytes_per_contact": round(state_bytes / world.n_contacts, 1),
        "state_mib_at_1m_contacts": round(state_bytes / world.n_contacts * 1e6 / 2**20, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "target_day_seconds_at_100k": 10.0,
    }
    print(
        f"sim one day, {contacts:,} contacts: {n_events:,} events in {day_s:.2f} s "
        f"({result['sim_events_per_second']:,} events/s, {day.tasks_applied:,} tasks applied)"
    )
    print(
        f"baseline orjson dump of the same {n_events:,} events: {baseline_s:.3f} s "
        f"({result['baseline_events_per_second']:,} events/s)"
    )
    print(f"ratio sim/baseline time: {result['ratio_sim_over_baseline_seconds']}x")
    print(
        f"first day (population synced into the CRM): {first.n_events:,} events in "
        f"{first_day_s:.2f} s; state {result['state_bytes_per_contact']} bytes/contact"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
