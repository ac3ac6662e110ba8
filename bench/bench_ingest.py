"""Benchmark: JSONL -> DuckDB ingestion against DuckDB's own ``read_json`` of the same file.

Generates N realistic canonical events (contact changes with email and phone, product views,
cart abandonment, payments, offer events; default 1,000,000, ``--quick`` 100,000), then in the
same run times

- the baseline: ``CREATE TABLE ... AS SELECT * FROM read_json(file)`` in a fresh warehouse;
- ``ingest_files``: validation, typing, PII tokenising, deduplication, dead letters;

each in a child process that reports its peak RSS. Prints both throughputs, their ratio and the
peak memory, and returns them as a dict.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import resource
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

EVENT_MIX = [
    ("product.viewed", 0.40),
    ("contact.updated", 0.20),
    ("cart.abandoned", 0.10),
    ("offer.delivered", 0.10),
    ("offer.opened", 0.06),
    ("payment.succeeded", 0.06),
    ("offer.clicked", 0.03),
    ("contact.created", 0.05),
]
STAGES = ["subscriber", "lead", "mql", "sql", "opportunity", "customer", "churned"]


def generate_events(path: Path, n_events: int, seed: int = 0, n_contacts: int = 100_000) -> int:
    """Write ``n_events`` canonical events as JSONL to ``path``; return the file size in bytes."""
    rng = random.Random(seed)
    types = [t for t, _ in EVENT_MIX]
    weights = [w for _, w in EVENT_MIX]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with open(path, "w", encoding="utf-8") as out:
        for i in range(n_events):
            event_type = rng.choices(types, weights)[0]
            contact = rng.randrange(n_contacts)
            payload: dict[str, Any] = {"contact_id": f"C-{contact:07d}"}
            if event_type.startswith("contact."):
                payload.update(
                    email=f"user{contact}@example.com",
                    phone=f"+1 555 {contact:07d}",
                    lifecycle_stage=rng.choice(STAGES),
                    status="active",
                )
            elif event_type in ("product.viewed", "cart.abandoned"):
                payload["product_id"] = f"P-{rng.randrange(5000):05d}"
            elif event_type == "payment.succeeded":
                payload.update(
                    amount=round(rng.uniform(5, 300), 2),
                    currency="EUR",
                    order_id=f"O-{i:09d}",
                )
            else:
                payload.update(
                    decision_id=uuid.UUID(int=rng.getrandbits(128)).hex, action="offer_a"
                )
            moment = start + timedelta(seconds=i * 2.6)
            event = {
                "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "timestamp": moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
                "type": event_type,
                "source": "crm",
                "payload": payload,
            }
            out.write(json.dumps(event, separators=(",", ":")) + "\n")
    return path.stat().st_size


def _peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_baseline(data: Path, home: Path, queue: mp.Queue) -> None:
    import duckdb

    con = duckdb.connect(str(home / "baseline.duckdb"))
    started = time.perf_counter()
    con.execute(
        f"CREATE TABLE events AS SELECT * FROM read_json('{data}', format='newline_delimited')"
    )
    rows = con.execute("SELECT count(*) FROM events").fetchall()[0][0]
    con.close()
    queue.put(
        {"seconds": time.perf_counter() - started, "rows": rows, "peak_rss_mib": _peak_rss_mib()}
    )


def _run_ingest(data: Path, home: Path, without_primary_key: bool, queue: mp.Queue) -> None:
    import duckdb

    from journey_pipeline.observe.ingest import ingest_files
    from journey_pipeline.settings import load_settings
    from journey_pipeline.warehouse import CORE_DDL

    settings = load_settings({"JOURNEY_HOME": str(home), "JOURNEY_PII_KEY": "bench-key"})
    if without_primary_key:
        # What-if for the warehouse contract: raw.events without its PRIMARY KEY index
        # (ingestion deduplicates by anti-join either way).
        ddl = CORE_DDL.replace("event_id        VARCHAR PRIMARY KEY", "event_id VARCHAR")
        with duckdb.connect(str(settings.warehouse_path)) as con:
            con.execute(ddl)
    started = time.perf_counter()
    summary = ingest_files(settings.warehouse_path, [data], settings)
    queue.put(
        {
            "seconds": time.perf_counter() - started,
            "rows": summary.accepted,
            "received": summary.received,
            "dead_lettered": summary.dead_lettered,
            "peak_rss_mib": _peak_rss_mib(),
        }
    )


def _in_child(target: Any, *args: Any) -> dict[str, Any]:
    """Run ``target(*args, queue)`` in a fresh process so its peak RSS is its own."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; return throughputs (events/s), their ratio and peak RSS (MiB)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="100,000 events (smoke run)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--without-primary-key",
        action="store_true",
        help="also time ingestion into a raw.events without its PRIMARY KEY (what-if)",
    )
    args = parser.parse_args(argv)
    n_events = 100_000 if args.quick else args.events
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        data = root / "events.jsonl"
        size = generate_events(data, n_events)
        baseline_home, ingest_home = root / "baseline", root / "ingest"
        baseline_home.mkdir()
        ingest_home.mkdir()
        baseline = _in_child(_run_baseline, data, baseline_home)
        ingest = _in_child(_run_ingest, data, ingest_home, False)
        no_pk = None
        if args.without_primary_key:
            (root / "no_pk").mkdir()
            no_pk = _in_child(_run_ingest, data, root / "no_pk", True)
    baseline_rate = baseline["rows"] / baseline["seconds"]
    ingest_rate = ingest["received"] / ingest["seconds"]
    result = {
        "events": n_events,
        "file_mib": round(size / 2**20, 1),
        "read_json_events_per_s": round(baseline_rate),
        "read_json_seconds": round(baseline["seconds"], 3),
        "read_json_peak_rss_mib": round(baseline["peak_rss_mib"], 1),
        "ingest_events_per_s": round(ingest_rate),
        "ingest_seconds": round(ingest["seconds"], 3),
        "ingest_peak_rss_mib": round(ingest["peak_rss_mib"], 1),
        "ingest_accepted": ingest["rows"],
        "ingest_dead_lettered": ingest["dead_lettered"],
        "ratio_vs_read_json": round(ingest_rate / baseline_rate, 3),
    }
    if no_pk is not None:
        no_pk_rate = no_pk["received"] / no_pk["seconds"]
        result["no_pk_ingest_events_per_s"] = round(no_pk_rate)
        result["no_pk_ratio_vs_read_json"] = round(no_pk_rate / baseline_rate, 3)
    print(
        f"read_json : {baseline_rate:>12,.0f} events/s  ({baseline['seconds']:.2f} s, "
        f"peak RSS {baseline['peak_rss_mib']:.0f} MiB)\n"
        f"ingest    : {ingest_rate:>12,.0f} events/s  ({ingest['seconds']:.2f} s, "
        f"peak RSS {ingest['peak_rss_mib']:.0f} MiB)\n"
        f"ratio ingest/read_json = {result['ratio_vs_read_json']:.2f}  "
        f"({n_events:,} events, {result['file_mib']} MiB)"
    )
    if no_pk is not None:
        print(
            f"ingest without raw.events PRIMARY KEY: {result['no_pk_ingest_events_per_s']:,} "
            f"events/s, ratio {result['no_pk_ratio_vs_read_json']:.2f}"
        )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
