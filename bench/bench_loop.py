"""The closed loop for one simulated day, on the local profile and on the production profile.

A new world of N contacts is simulated for one day (timed apart: it stands in for the CRM),
then ``daily_loop_job`` runs for that day through Dagster, exactly as `journey demo` runs it:
ingest -> dbt feature marts -> Feast (registry + online materialization) -> scoring ->
CRM write-back through the outbox -> outcomes. Wall time per stage comes from the run's own
event log (step start to step end; the asset checks of a stage are counted with it).

- local: DuckDB, SQLite Feast online store and registry, MLflow and outbox on SQLite, Dagster
  on SQLite.
- production: the same DuckDB warehouse and dbt target, Feast on Redis with its registry on
  PostgreSQL, MLflow, the outbox and the Dagster instance on PostgreSQL (127.0.0.1:5432 and
  127.0.0.1:6379 unless JOURNEY_BENCH_PG_* / JOURNEY_BENCH_REDIS_PORT say otherwise; skipped
  with the reason when either is down). Both profiles write to the local CRM so the CRM is not
  part of the comparison.

Each profile runs in a fresh Python process, so neither inherits the other's warm imports
or caches. The baseline is the local profile measured in the same run; the printed ratio is
production / local per stage and for the whole day. Target: the local day in at most 120 s
for 100,000 contacts. Each profile gets its own temporary home, PostgreSQL databases and an
empty Redis logical database, all removed afterwards.

    .venv/bin/journey bench loop            # 100,000 contacts
    .venv/bin/journey bench loop --quick    # 10,000 contacts
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

TARGET_LOCAL_S = 120.0
PG_HOST = os.environ.get("JOURNEY_BENCH_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("JOURNEY_BENCH_PG_PORT", "5432"))
PG_USER = os.environ.get("JOURNEY_BENCH_PG_USER", "postgres")
REDIS_PORT = int(os.environ.get("JOURNEY_BENCH_REDIS_PORT", "6379"))

# Dagster step -> stage of the loop. Asset checks run as their own steps.
STAGES = {
    "raw_events": "ingest",
    "feature_assets": "dbt",
    "feast_registry": "feast",
    "online_features": "feast",
    "decisions": "score",
    "crm_writeback": "write_back",
    "outcomes": "outcomes",
}
STAGE_ORDER = ("ingest", "dbt", "feast", "score", "write_back", "outcomes", "checks")
CHECK_STAGE = {
    "raw_events_": "ingest",
    "online_features_": "feast",
    "decisions_": "score",
}
# Variables of either profile; cleared before each run so neither leaks into the other.
PROFILE_VARIABLES = (
    "JOURNEY_HOME",
    "DAGSTER_HOME",
    "JOURNEY_PROFILE",
    "JOURNEY_PII_KEY",
    "JOURNEY_POSTGRES_DSN",
    "JOURNEY_REDIS_URL",
    "JOURNEY_MLFLOW_URI",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "JOURNEY_OUTBOX_URL",
    "JOURNEY_KAFKA_BOOTSTRAP",
    "JOURNEY_CRM",
    "JOURNEY_DBT_TARGET",
    "JOURNEY_WAREHOUSE_PATH",
    "JOURNEY_PG_HOST",
    "JOURNEY_PG_PORT",
    "JOURNEY_PG_USER",
    "JOURNEY_PG_PASSWORD",
    "JOURNEY_DAGSTER_DB",
)


def _up(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def _postgres_databases(*names: str) -> Iterator[None]:
    import psycopg2

    admin = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres")
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            for name in names:
                cur.execute(f"CREATE DATABASE {name}")
        yield
    finally:
        with admin.cursor() as cur:
            for name in names:
                cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@contextmanager
def _empty_redis_database() -> Iterator[str]:
    """An empty logical Redis database (1..15); its keys are deleted afterwards."""
    import redis

    for index in random.sample(range(1, 16), 15):
        client = redis.Redis(host=PG_HOST, port=REDIS_PORT, db=index)
        if client.dbsize() == 0:
            break
        client.close()
    else:
        raise RuntimeError("no empty logical Redis database (1..15)")
    try:
        yield f"redis://{PG_HOST}:{REDIS_PORT}/{index}"
    finally:
        keys = list(client.scan_iter(count=5000))
        for start in range(0, len(keys), 5000):
            client.delete(*keys[start : start + 5000])
        client.close()


def _stage_seconds(instance: Any, run_id: str) -> dict[str, float]:
    """Seconds per stage from the run's event log: each step's start to its end."""
    started: dict[str, float] = {}
    seconds: dict[str, float] = defaultdict(float)
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or not event.step_key:
            continue
        if event.event_type_value == "STEP_START":
            started[event.step_key] = record.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
            step = event.step_key
            stage = STAGES.get(step)
            if stage is None:
                stage = next((s for p, s in CHECK_STAGE.items() if step.startswith(p)), "checks")
            seconds[stage] += record.timestamp - started.pop(step, record.timestamp)
    return {stage: round(seconds.get(stage, 0.0), 2) for stage in STAGE_ORDER}


def run_day(env: dict[str, str], contacts: int, seed: int) -> dict[str, Any]:
    """Simulate one day of a new world and run the daily loop on it under ``env``."""
    from journey_pipeline.features.dbt_assets import environment

    # The profile's variables of this shell are unset first: ``env`` alone picks the stores.
    with environment({**dict.fromkeys(PROFILE_VARIABLES), **env}), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from journey_pipeline.definitions import defs
        from journey_pipeline.instance import dagster_instance
        from journey_pipeline.settings import load_settings
        from journey_pipeline.sim.run import simulate

        settings = load_settings()
        settings.ensure_dirs()
        started = time.perf_counter()
        sim = simulate(settings, days=1, contacts=contacts, seed=seed)
        simulate_s = time.perf_counter() - started
        instance = dagster_instance(settings)
        try:
            started = time.perf_counter()
            result = defs.get_job_def("daily_loop_job").execute_in_process(
                instance=instance, partition_key=str(sim["last_date"]), raise_on_error=False
            )
            wall = time.perf_counter() - started
            stages = _stage_seconds(instance, result.run_id)
            counts = {}
            for event in result.get_asset_materialization_events():
                materialization = event.step_materialization_data.materialization
                meta = {k: v.value for k, v in materialization.metadata.items()}
                name = materialization.asset_key.path[-1]
                if name == "raw_events":
                    counts["events"] = meta.get("accepted")
                elif name == "online_features":
                    counts["online_rows"] = meta.get("rows_written")
                elif name == "decisions":
                    counts["decisions"] = meta.get("live_decisions_inserted")
                elif name == "crm_writeback":
                    counts["crm_tasks"] = meta.get("dispatch_confirmed")
        finally:
            instance.dispose()
    return {
        "success": result.success,
        "simulate_s": round(simulate_s, 2),
        "loop_s": round(wall, 2),
        "stages_s": stages,
        **counts,
    }


def local_env(home: Path) -> dict[str, str]:
    return {
        "JOURNEY_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "JOURNEY_PII_KEY": "bench-loop-key",
    }


def _in_fresh_process(profile: str, contacts: int, seed: int) -> dict[str, Any]:
    """Run one profile's day in a new interpreter; its result is the last stdout line."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--single",
        profile,
        "--contacts",
        str(contacts),
        "--seed",
        str(seed),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"success": False, "error": (done.stderr or done.stdout)[-2000:]}
    return json.loads(lines[-1])


def run_profile(profile: str, contacts: int, seed: int) -> dict[str, Any]:
    """One profile's day in this process, with its own temporary home and stores."""
    root = Path(tempfile.mkdtemp(prefix=f"bench_loop_{profile}_"))
    try:
        if profile == "local":
            return run_day(local_env(root), contacts, seed)
        if not (_up(PG_HOST, PG_PORT) and _up(PG_HOST, REDIS_PORT)):
            return {
                "skipped": f"PostgreSQL ({PG_HOST}:{PG_PORT}) or Redis ({PG_HOST}:"
                f"{REDIS_PORT}) is not running"
            }
        return run_production(root, contacts, seed)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_production(root: Path, contacts: int, seed: int) -> dict[str, Any]:
    """The production profile's day on its own PostgreSQL databases and Redis database."""
    base = f"bench_loop_{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:
        stack.enter_context(_postgres_databases(base, f"{base}_dagster"))
        redis_url = stack.enter_context(_empty_redis_database())
        env = {
            **local_env(root),
            "JOURNEY_PROFILE": "production",
            "JOURNEY_POSTGRES_DSN": f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{base}",
            "JOURNEY_REDIS_URL": redis_url,
            "JOURNEY_CRM": "local",
            "JOURNEY_PG_HOST": PG_HOST,
            "JOURNEY_PG_PORT": str(PG_PORT),
            "JOURNEY_PG_USER": PG_USER,
            "JOURNEY_PG_PASSWORD": os.environ.get("JOURNEY_BENCH_PG_PASSWORD", ""),
            "JOURNEY_DAGSTER_DB": f"{base}_dagster",
        }
        return run_day(env, contacts, seed)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 contacts")
    parser.add_argument("--contacts", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--profiles", default="local,production", help="comma-separated: local, production"
    )
    parser.add_argument("--single", choices=("local", "production"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    contacts = args.contacts or (10_000 if args.quick else 100_000)
    if args.single:
        result = run_profile(args.single, contacts, args.seed)
        print(json.dumps(result))
        return result
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    results: dict[str, Any] = {"contacts": contacts}
    for profile in ("local", "production"):
        if profile in profiles:
            results[profile] = _in_fresh_process(profile, contacts, args.seed)
            print(f"{profile + ':':<12}{json.dumps(results[profile])}", flush=True)

    local, production = results.get("local"), results.get("production")
    if local and production and "loop_s" in local and "loop_s" in production:
        results["ratio_production_over_local"] = {
            "loop": round(production["loop_s"] / local["loop_s"], 2),
            **{
                stage: round(production["stages_s"][stage] / local["stages_s"][stage], 2)
                for stage in STAGE_ORDER
                if local["stages_s"][stage] > 0
            },
        }
    if local and "loop_s" in local:
        results["local_within_target"] = local["loop_s"] <= TARGET_LOCAL_S
    print(f"\nclosed loop, one day of {contacts:,} contacts (seconds)")
    header = f"{'stage':<12}{'local':>10}{'production':>12}{'prod/local':>12}"
    print(header)
    ratios = results.get("ratio_production_over_local", {})

    def cell(profile: dict | None, stage: str) -> str:
        if not profile or "loop_s" not in profile:
            return "-"
        return f"{profile['loop_s'] if stage == 'loop' else profile['stages_s'][stage]:.1f}"

    for stage in (*STAGE_ORDER, "loop"):
        ratio = ratios.get(stage)
        print(
            f"{stage:<12}{cell(local, stage):>10}{cell(production, stage):>12}{'' if ratio is None else f'{ratio:.2f}x':>12}"
        )
    if local and "loop_s" in local:
        print(
            f"local day: {local['loop_s']:.1f} s (target <= {TARGET_LOCAL_S:.0f} s for 100,000 "
            f"contacts); simulating the day took {local['simulate_s']:.1f} s apart"
        )
    return results


if __name__ == "__main__":
    main()
