"""The lean online read path returns exactly what Feast's ``get_online_features`` returns.

The decision service, the stream and the scoring asset read features through
:func:`online_features` (an :class:`OnlineFeatureReader` over the online store's own
``online_read``); these tests compare it value by value and dtype by dtype with the reference
path through ``FeatureStore.get_online_features`` on the real SQLite store of a quickstart home
and on a Redis online store (a unique Feast project on the local Redis, removed afterwards).
"""

from __future__ import annotations

import socket
import uuid

import pandas as pd
import pytest
from feast import FeatureStore
from feast.infra.offline_stores.duckdb import DuckDBOfflineStoreConfig
from feast.infra.online_stores.redis import RedisOnlineStoreConfig
from feast.repo_config import RegistryConfig, RepoConfig

from journey_pipeline.features import feature_store as fs
from journey_pipeline.features.contract import FEATURES

REDIS_URL = "redis://127.0.0.1:6379/0"


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


def _assert_same_as_feast(store: FeatureStore, contact_ids: list[str]) -> pd.DataFrame:
    lean = fs.online_features(store, contact_ids)
    reference = fs.feast_online_features(store, contact_ids)
    pd.testing.assert_frame_equal(lean, reference)
    assert list(lean.columns) == list(FEATURES)
    assert list(lean.index) == contact_ids
    return lean


def test_lean_read_matches_get_online_features_on_sqlite(served_home):
    store = fs.build_store(served_home.settings)
    known = served_home.contact_ids[:25]
    # Unknown contacts, duplicates and request order are kept, as get_online_features does.
    ids = [*known, "C-unknown", known[3], known[0]]
    served = _assert_same_as_feast(store, ids)
    assert served.loc["C-unknown"].isna().all()
    assert served.loc[known[:25]].notna().any(axis=1).all()
    assert str(served["orders_30d"].dtype) == "Int32"
    assert fs.online_features(store, []).empty

    # An erased contact disappears from both paths at once (no stale cache in the reader).
    fs.erase_contacts(store, [known[1]])
    assert _assert_same_as_feast(store, [known[1], known[2]]).loc[known[1]].isna().all()


def test_lean_read_reports_a_broken_store(served_home):
    store = fs.build_store(served_home.settings)
    fs.online_features(store, served_home.contact_ids[:1])
    conn = store._get_provider().online_store._get_conn(store.config)
    for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall():
        conn.execute(f'DROP TABLE "{table}"')
    with pytest.raises(Exception, match="no such table"):
        fs.online_features(store, served_home.contact_ids[:1])


@pytest.mark.redis
@pytest.mark.skipif(not _redis_up(), reason="Redis is not running on 127.0.0.1:6379")
def test_lean_read_matches_get_online_features_on_redis(tmp_path):
    import redis

    project = f"jp_reader_{uuid.uuid4().hex[:10]}"
    config = RepoConfig(
        project=project,
        provider="local",
        registry=RegistryConfig(path=str(tmp_path / "registry.db"), cache_ttl_seconds=60),
        offline_store=DuckDBOfflineStoreConfig(),
        online_store=RedisOnlineStoreConfig(
            connection_string=fs.redis_connection_string(REDIS_URL), skip_dedup=True
        ),
        entity_key_serialization_version=fs.ENTITY_KEY_SERIALIZATION_VERSION,
        repo_path=tmp_path,
    )
    rows = fs.synthetic_feature_rows(30, 1, seed=3)
    export = fs.write_feature_export(rows, tmp_path / "features.parquet")
    store = FeatureStore(config=config)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        fs.apply_definitions(store, export)
        assert fs.write_online(store, rows) == 30
        ids = rows.column("contact_id").to_pylist()
        served = _assert_same_as_feast(store, [*ids[:10], "C-unknown", ids[4]])
        assert served.loc["C-unknown"].isna().all()
        assert served.loc[ids[:10]].notna().any(axis=1).all()
    finally:
        for key in client.scan_iter(match=b"*" + project.encode()):
            client.delete(key)
        store.registry.teardown()


def test_answers_built_column_wise_equal_the_row_by_row_answers(served_home):
    from journey_pipeline.serve.core import (
        DecisionService,
        ServiceConfig,
        decision_response,
        decision_responses,
    )

    service = DecisionService(served_home.settings, ServiceConfig()).start(background=False)
    try:
        policy = service.served.policy
        ids = [*served_home.contact_ids[:40], "C-unknown"]
        contexts = fs.online_features(service._store, ids)
        triggers = pd.DataFrame(
            {
                "contact_id": ids,
                "trigger_event_id": [f"t-{i}" for i in range(len(ids))],
                "decided_at": pd.Timestamp("2026-02-01T12:00:00.123456Z"),
            }
        )
        rows = policy.decide(contexts, triggers)
        assert rows["fallback_reason"].notna().any() and rows["fallback_reason"].isna().any()
        expected = [decision_response(row) for row in rows.to_dict(orient="records")]
        assert decision_responses(rows) == expected
        assert decision_responses(rows.iloc[:0]) == []
    finally:
        service.close()


def test_a_registry_without_the_feature_service_says_how_to_fill_it(settings):
    """A fresh (or stale) Feast registry: the error names the commands that fix it."""
    store = fs.build_store(settings)
    with pytest.raises(fs.StaleRegistryError, match="feast -c feature_repo apply") as caught:
        fs.online_features(store, ["C-0000001"])
    assert "online_features" in str(caught.value)
