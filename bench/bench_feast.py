"""Feast benchmarks: online materialization into SQLite, and one-contact online reads.

1. Materializing N contacts x the contract's features into the SQLite online store:
   ``materialize_latest`` (newest row per contact from the Parquet export, written through
   ``FeatureStore.write_to_online_store`` in batches, sharded over writer processes) against
   stock ``FeatureStore.materialize`` over the same Parquet export, in the same run. Stock
   runs on a slice of the contacts and its rate is scaled (the output says so) because it
   needs minutes per million contacts.
2. ``get_online_features`` for one contact through the feature service: p50/p99 over
   ``--reads`` calls on SQLite and on Redis (127.0.0.1:6379, SQL registry on the local
   PostgreSQL; skipped with a reason when either is down).

    python bench/bench_feast.py            # 1,000,000 contacts, stock on 100,000
    python bench/bench_feast.py --quick    # 100,000 contacts, stock on 20,000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import uuid
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from journey_pipeline.features import feature_store as fs
from journey_pipeline.settings import DevelopmentKeyWarning, Settings, load_settings

DAYS = 2  # two daily rows per contact: the newest must win
POSTGRES_DSN = os.environ.get(
    "JOURNEY_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("JOURNEY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def _settings(home: Path, **env: str) -> Settings:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DevelopmentKeyWarning)
        settings = load_settings({"JOURNEY_HOME": str(home), **env})
    settings.ensure_dirs()
    return settings


def bench_materialize(root: Path, contacts: int, stock_contacts: int, batch_size: int) -> dict:
    """Time our materialization of ``contacts`` and stock materialize of ``stock_contacts``."""
    rows = fs.synthetic_feature_rows(contacts, DAYS, seed=7)
    ours_settings = _settings(root / "ours")
    fs.write_feature_export(rows, fs.export_path(ours_settings))
    ours_store = fs.build_store(ours_settings)
    fs.apply_definitions(ours_store, fs.export_path(ours_settings))
    started = time.perf_counter()
    summary = fs.materialize_latest(ours_store, ours_settings, full=True, batch_size=batch_size)
    ours_seconds = time.perf_counter() - started
    online_contacts = fs.online_row_count(ours_store)
    parity = fs.check_parity(ours_store, ours_settings, sample_size=200, seed=1)
    if online_contacts != contacts or not parity.passed:
        raise RuntimeError(
            f"our materialization is wrong: {online_contacts} online, parity {parity.summary()}"
        )

    # A day later only some contacts changed: the incremental run writes just those.
    changed_contacts = max(1, contacts // 100)
    newest_day = rows.column(fs.TIMESTAMP_FIELD).combine_chunks()
    is_changed = pc.and_(
        pc.equal(newest_day, pc.max(newest_day)),
        pc.less(
            pc.cast(pc.utf8_slice_codeunits(rows.column(fs.ENTITY_KEY), 2), pa.int64()),
            changed_contacts,
        ),
    )
    spend = rows.column("spend_90d")
    rows = rows.set_column(
        rows.schema.get_field_index("spend_90d"),
        "spend_90d",
        pc.if_else(is_changed, pc.add(spend, 1.0), spend),
    )
    fs.write_feature_export(rows, fs.export_path(ours_settings))
    started = time.perf_counter()
    incremental = fs.materialize_latest(ours_store, ours_settings, batch_size=batch_size)
    incremental_seconds = time.perf_counter() - started
    if incremental["rows_written"] != changed_contacts:
        raise RuntimeError(f"incremental run wrote {incremental['rows_written']} rows")

    stock_settings = _settings(root / "stock")
    stock_ids = {f"C-{i:07d}" for i in range(stock_contacts)}
    stock_rows = rows.filter(pc.is_in(rows.column(fs.ENTITY_KEY), pa.array(sorted(stock_ids))))
    fs.write_feature_export(stock_rows, fs.export_path(stock_settings))
    stock_store = fs.build_store(stock_settings)
    fs.apply_definitions(stock_store, fs.export_path(stock_settings))
    start = datetime(2025, 1, 1, tzinfo=UTC)
    end = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=DAYS + 1)
    started = time.perf_counter()
    stock_store.materialize(start_date=start, end_date=end)
    stock_seconds = time.perf_counter() - started
    stock_online = fs.online_row_count(stock_store)
    if stock_online != stock_contacts:
        raise RuntimeError(f"stock materialize wrote {stock_online} of {stock_contacts} contacts")

    ours_rate = contacts / ours_seconds
    stock_rate = stock_contacts / stock_seconds
    return {
        "contacts": contacts,
        "features": len(fs.FEATURES),
        "ours_seconds": round(ours_seconds, 2),
        "ours_contacts_per_s": round(ours_rate),
        "ours_batch_size": batch_size,
        "ours_summary_seconds": round(summary["seconds"], 2),
        "incremental_changed_contacts": changed_contacts,
        "incremental_seconds": round(incremental_seconds, 2),
        "stock_contacts": stock_contacts,
        "stock_seconds": round(stock_seconds, 2),
        "stock_contacts_per_s": round(stock_rate),
        "stock_scaled_seconds": round(contacts / stock_rate, 2),
        "stock_scaled": stock_contacts != contacts,
        "speedup": round(ours_rate / stock_rate, 2),
        "_store": ours_store,
    }


def _latencies(store: Any, contact_ids: list[str], reads: int) -> dict[str, float]:
    service = store.get_feature_service(fs.FEATURE_SERVICE)
    rng = np.random.default_rng(3)
    picks = rng.choice(contact_ids, size=reads)
    for contact_id in picks[:50]:  # warm the registry cache and connections
        store.get_online_features(features=service, entity_rows=[{fs.ENTITY_KEY: contact_id}])
    timings = np.empty(reads)
    for index, contact_id in enumerate(picks):
        started = time.perf_counter()
        store.get_online_features(
            features=service, entity_rows=[{fs.ENTITY_KEY: contact_id}]
        ).to_dict()
        timings[index] = time.perf_counter() - started
    return {
        "reads": reads,
        "p50_ms": round(float(np.percentile(timings, 50)) * 1000, 3),
        "p99_ms": round(float(np.percentile(timings, 99)) * 1000, 3),
        "mean_ms": round(float(timings.mean()) * 1000, 3),
    }


def _redis_store(root: Path, contacts: int) -> tuple[Any, Any, str] | str:
    """A production-profile store on Redis and a throwaway PostgreSQL schema, loaded with
    ``contacts`` contacts; or the reason it cannot be built."""
    try:
        import psycopg2
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
        schema = f"feast_bench_{uuid.uuid4().hex[:8]}"
        with psycopg2.connect(POSTGRES_DSN, connect_timeout=3) as conn, conn.cursor() as cur:
            cur.execute(f"CREATE SCHEMA {schema}")
    except Exception as exc:  # any connection failure means: skip with its reason
        return f"Redis or PostgreSQL unreachable: {exc}"
    separator = "&" if "?" in POSTGRES_DSN else "?"
    settings = _settings(
        root / "redis",
        JOURNEY_PROFILE="production",
        JOURNEY_PII_KEY="bench-key",
        JOURNEY_REDIS_URL=REDIS_URL,
        JOURNEY_POSTGRES_DSN=f"{POSTGRES_DSN}{separator}options=-csearch_path%3D{schema}",
    )
    project = f"bench_{uuid.uuid4().hex[:8]}"
    store = fs.build_store(settings, project=project)
    rows = fs.synthetic_feature_rows(contacts, 1, seed=11)
    fs.write_feature_export(rows, fs.export_path(settings))
    fs.apply_definitions(store, fs.export_path(settings))
    fs.materialize_latest(store, settings, full=True)
    return store, rows.column(fs.ENTITY_KEY).to_pylist(), schema


def _drop_redis_store(store: Any, contact_ids: list[str], schema: str) -> None:
    import psycopg2

    fs.erase_contacts(store, contact_ids)
    store.registry.teardown()
    with psycopg2.connect(POSTGRES_DSN) as conn, conn.cursor() as cur:
        cur.execute(f"DROP SCHEMA {schema} CASCADE")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k contacts, stock on 20k")
    parser.add_argument("--contacts", type=int, default=None)
    parser.add_argument("--stock-contacts", type=int, default=None)
    parser.add_argument("--reads", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=50_000, help="contacts per write")
    args = parser.parse_args(argv)
    contacts = args.contacts or (100_000 if args.quick else 1_000_000)
    stock_contacts = min(contacts, args.stock_contacts or (20_000 if args.quick else 100_000))

    root = Path(tempfile.mkdtemp(prefix="bench-feast-"))
    try:
        mat = bench_materialize(root, contacts, stock_contacts, args.batch_size)
        sqlite_store = mat.pop("_store")
        ids = [f"C-{i:07d}" for i in range(contacts)]
        sqlite_reads = _latencies(sqlite_store, ids, args.reads)
        redis_setup = _redis_store(root, min(contacts, 20_000))
        if isinstance(redis_setup, str):
            redis_reads: dict[str, Any] = {"skipped": redis_setup}
        else:
            store, redis_ids, schema = redis_setup
            try:
                redis_reads = _latencies(store, redis_ids, args.reads)
            finally:
                _drop_redis_store(store, redis_ids, schema)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    scaled = (
        f" (stock measured on {stock_contacts:,} contacts, scaled)" if mat["stock_scaled"] else ""
    )
    print(f"materialize {contacts:,} contacts x {mat['features']} features into SQLite")
    print(f"  ours : {mat['ours_seconds']:9.2f} s  {mat['ours_contacts_per_s']:>9,} contacts/s")
    print(
        f"  stock: {mat['stock_scaled_seconds']:9.2f} s  {mat['stock_contacts_per_s']:>9,} "
        f"contacts/s{scaled}"
    )
    print(f"  ratio: {mat['speedup']:.2f}x faster than stock FeatureStore.materialize")
    print(
        f"  incremental rerun, {mat['incremental_changed_contacts']:,} contacts changed: "
        f"{mat['incremental_seconds']:.2f} s (stock rewrites the window: "
        f"{mat['stock_scaled_seconds']:.2f} s)"
    )
    print(f"get_online_features, one contact, {args.reads:,} reads")
    print(f"  sqlite: p50 {sqlite_reads['p50_ms']:.3f} ms  p99 {sqlite_reads['p99_ms']:.3f} ms")
    if "skipped" in redis_reads:
        print(f"  redis : skipped ({redis_reads['skipped']})")
    else:
        print(
            f"  redis : p50 {redis_reads['p50_ms']:.3f} ms  p99 {redis_reads['p99_ms']:.3f} ms"
            f"  (p50 {redis_reads['p50_ms'] / sqlite_reads['p50_ms']:.2f}x of sqlite)"
        )
    result = {
        "materialize": mat,
        "online_read_sqlite": sqlite_reads,
        "online_read_redis": redis_reads,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
