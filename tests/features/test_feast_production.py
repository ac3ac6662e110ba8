"""The production feature store: Redis online store and SQL registry on the real PostgreSQL.

Each test uses its own Feast project and its own PostgreSQL schema, and removes both.
"""

from __future__ import annotations

import socket
import uuid
from datetime import timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from journey_pipeline.features import feature_store as fs
from journey_pipeline.features.contract import FEATURES
from journey_pipeline.settings import load_settings

POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"


def _up(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


pytestmark = [
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.skipif(not _up(6379), reason="Redis is not running on 127.0.0.1:6379"),
    pytest.mark.skipif(not _up(5432), reason="PostgreSQL is not running on 127.0.0.1:5432"),
]

CONTACTS = 40


@pytest.fixture
def production(journey_home, monkeypatch):
    """Production settings on a throwaway PostgreSQL schema and a unique Feast project."""
    import psycopg2
    import redis

    schema = f"feast_test_{uuid.uuid4().hex[:10]}"
    with psycopg2.connect(POSTGRES_DSN) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
    monkeypatch.setenv("JOURNEY_PROFILE", "production")
    monkeypatch.setenv("JOURNEY_PII_KEY", "test-key-for-production-profile")
    monkeypatch.setenv("JOURNEY_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("JOURNEY_POSTGRES_DSN", f"{POSTGRES_DSN}?options=-csearch_path%3D{schema}")
    settings = load_settings()
    settings.ensure_dirs()
    project = f"jp_test_{uuid.uuid4().hex[:10]}"
    store = fs.build_store(settings, project=project)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        yield settings, store, client
    finally:
        for key in client.scan_iter(match=b"*" + project.encode()):
            client.delete(key)
        store.registry.teardown()
        with psycopg2.connect(POSTGRES_DSN) as conn, conn.cursor() as cur:
            cur.execute(f"DROP SCHEMA {schema} CASCADE")


def _project_keys(client, project: str) -> list[bytes]:
    return list(client.scan_iter(match=b"*" + project.encode()))


def test_production_profile_uses_redis_and_the_sql_registry(production):
    settings, store, _ = production
    assert store.config.online_store.type == "redis"
    assert store.config.online_store.connection_string == "127.0.0.1:6379,db=0"
    assert store.config.registry.registry_type == "sql"
    assert store.config.registry.path.startswith("postgresql+psycopg2://")


def test_materialize_read_parity_and_erasure_on_redis(production):
    settings, store, client = production
    rows = fs.synthetic_feature_rows(CONTACTS, 2, seed=9)
    fs.write_feature_export(rows, fs.export_path(settings))
    fs.apply_definitions(store, fs.export_path(settings))
    # a second store on the same registry sees what the first applied
    assert fs.build_store(settings, project=store.project).get_feature_service("next_best_action")

    summary = fs.materialize_latest(store, settings)
    assert summary["rows_written"] == CONTACTS
    assert len(_project_keys(client, store.project)) == CONTACTS
    assert fs.online_offline_counts(store, settings) == {
        "offline_contacts": CONTACTS,
        "online_contacts": CONTACTS,
    }
    served = fs.online_features(store, ["C-0000003", "C-0000999"])
    assert served.loc["C-0000003"].notna().any()
    assert served.loc["C-0000999"].isna().all()
    parity = fs.check_parity(store, settings, sample_size=CONTACTS, seed=2)
    assert parity.passed, parity.summary()
    assert parity.compared_values == CONTACTS * len(FEATURES)

    assert fs.erase_contacts(store, ["C-0000003"], settings=settings) == 1
    assert len(_project_keys(client, store.project)) == CONTACTS - 1
    assert fs.online_features(store, ["C-0000003"]).loc["C-0000003"].isna().all()
    assert fs.check_parity(store, settings, sample_size=CONTACTS, seed=2).missing_online == [
        "C-0000003"
    ]


def test_a_recomputed_row_for_the_same_day_reaches_redis(production):
    settings, store, _ = production
    rows = fs.synthetic_feature_rows(CONTACTS, 1, seed=10)
    fs.write_feature_export(rows, fs.export_path(settings))
    fs.apply_definitions(store, fs.export_path(settings))
    fs.materialize_latest(store, settings)

    # dbt rebuilds the day (a backfill): same feature_ts, new created_ts and value.
    spend = rows.column("spend_90d").to_pylist()
    spend[7] = 12_345.0
    rebuilt = rows.set_column(
        rows.schema.get_field_index("spend_90d"), "spend_90d", pa.array(spend, pa.float64())
    )
    created = rows.schema.get_field_index("created_ts")
    rebuilt = rebuilt.set_column(
        created,
        "created_ts",
        pc.add(rows.column("created_ts"), pa.scalar(timedelta(hours=2))),
    )
    fs.write_feature_export(rebuilt, fs.export_path(settings))
    summary = fs.materialize_latest(store, settings)
    assert summary["rows_written"] == CONTACTS  # every row's created_ts moved
    assert fs.online_features(store, ["C-0000007"]).loc["C-0000007", "spend_90d"] == 12_345.0
    assert fs.check_parity(store, settings, sample_size=CONTACTS, seed=1).passed
