"""Benchmark: exactly-once CRM write-back through the outbox against direct CRM writes.

Times, in the same run and on the same machine, writing N decisions (default 5,000;
``--quick``: 300) to the embedded local CRM (SQLite):

- the baseline: one ``LocalCrm.create_task`` call per decision, no outbox (no retries, no
  crash safety, no record of what was sent);
- the outbox: ``enqueue`` of the N decision-log rows plus ``dispatch`` until all are
  confirmed (claim with lease, mark sent, CRM call, record), on a SQLite outbox and, with
  ``--postgres``, on the PostgreSQL server at 127.0.0.1:5432 (db ``test``);
- a re-run of enqueue + dispatch on the same rows (must create nothing).

Prints decisions per second, the outbox/baseline time ratio (the price of exactly-once) and
returns them as a dict.

    python bench/bench_outbox.py [--quick] [--decisions N] [--postgres]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from journey_pipeline.act.crm import LocalCrm  # noqa: E402
from journey_pipeline.act.outbox import Outbox, decision_payload  # noqa: E402

POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


def make_decisions(n: int) -> list[dict]:
    """``n`` live decision-log rows with CRM-bound actions."""
    decided_at = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    return [
        {
            "decision_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench-{i}")),
            "contact_id": f"C-{i:07d}",
            "decided_at": decided_at,
            "decision_date": decided_at.date(),
            "trigger_event_id": f"evt-{i}",
            "trigger_type": "cart.abandoned",
            "policy_version": "bench",
            "model_version": "1",
            "mode": "live",
            "action": "offer_a" if i % 2 else "offer_b",
            "propensity": 0.8,
            "holdout": False,
            "expected_rewards": '{"no_offer": 0.0, "offer_a": 1.2, "offer_b": 0.9}',
            "explanation": '[{"feature": "spend_30d", "contribution": 0.31}]',
            "rules_applied": "[]",
            "fallback_reason": None,
        }
        for i in range(n)
    ]


def time_direct(decisions: list[dict], crm_path: Path) -> float:
    """Seconds to write every decision straight to the CRM."""
    crm = LocalCrm(crm_path)
    payloads = [decision_payload(d) for d in decisions]
    start = time.perf_counter()
    for payload in payloads:
        crm.create_task(payload, payload["decision_id"])
    elapsed = time.perf_counter() - start
    assert crm.task_count() == len(decisions)
    return elapsed


def time_outbox(decisions: list[dict], crm_path: Path, url: str, prefix: str = "") -> dict:
    """Seconds to enqueue and dispatch every decision, and to re-run both."""
    crm = LocalCrm(crm_path)
    outbox = Outbox(url, table_prefix=prefix)
    try:
        start = time.perf_counter()
        enqueued = outbox.enqueue(decisions)
        enqueue_s = time.perf_counter() - start
        summary = outbox.dispatch(crm, max_batch=200, max_wait_s=0)
        total_s = time.perf_counter() - start
        assert enqueued == summary.confirmed == len(decisions) == crm.task_count()
        start = time.perf_counter()
        again = outbox.enqueue(decisions)
        rerun = outbox.dispatch(crm, max_wait_s=0)
        rerun_s = time.perf_counter() - start
        assert again == 0 and rerun.sent == 0 and crm.task_count() == len(decisions)
    finally:
        if prefix:
            outbox.drop_tables()
        outbox.dispose()
    return {"enqueue_s": enqueue_s, "total_s": total_s, "rerun_s": rerun_s}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 decisions: a smoke run")
    parser.add_argument("--decisions", type=int, default=None)
    parser.add_argument("--postgres", action="store_true", help="also time a PostgreSQL outbox")
    args = parser.parse_args(argv)
    n = args.decisions or (300 if args.quick else 5_000)
    decisions = make_decisions(n)
    result: dict = {"decisions": n}
    with tempfile.TemporaryDirectory(prefix="bench-outbox-") as tmp:
        home = Path(tmp)
        direct_s = time_direct(decisions, home / "direct-crm.db")
        result["baseline_direct_s"] = round(direct_s, 4)
        result["baseline_direct_per_s"] = round(n / direct_s, 1)
        stores = {"sqlite": (f"sqlite:///{home}/outbox.db", "")}
        if args.postgres:
            stores["postgres"] = (POSTGRES_URL, f"bench{uuid.uuid4().hex[:8]}_")
        for name, (url, prefix) in stores.items():
            timing = time_outbox(decisions, home / f"{name}-crm.db", url, prefix)
            result[f"{name}_outbox_s"] = round(timing["total_s"], 4)
            result[f"{name}_enqueue_s"] = round(timing["enqueue_s"], 4)
            result[f"{name}_outbox_per_s"] = round(n / timing["total_s"], 1)
            result[f"{name}_rerun_s"] = round(timing["rerun_s"], 4)
            result[f"{name}_ratio_vs_direct"] = round(timing["total_s"] / direct_s, 2)
    for key, value in result.items():
        print(f"{key:>28}: {value}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
