"""Feast feature store on a real SQLite online store and DuckDB over a real Parquet export."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.sqlite import SqliteOnlineStore

from journey_pipeline.features import feature_store as fs
from journey_pipeline.features.contract import FEATURES

CONTACTS = 60
DAYS = 3


def _rows_frame(rows: pa.Table) -> pd.DataFrame:
    return rows.to_pandas(types_mapper=pd.ArrowDtype)


def _replace_rows(rows: pa.Table, contact_id: str, feature_ts: datetime, **values) -> pa.Table:
    """``rows`` with the features of one (contact, day) row replaced by ``values``."""
    frame = _rows_frame(rows)
    mask = (frame["contact_id"] == contact_id) & (frame["feature_ts"] == pd.Timestamp(feature_ts))
    assert mask.sum() == 1
    for name, value in values.items():
        frame.loc[mask, name] = value
    return pa.Table.from_pandas(frame, schema=rows.schema, preserve_index=False)


@pytest.fixture
def feast_store(settings):
    """A local store with the definitions applied over a fresh synthetic export."""
    rows = fs.synthetic_feature_rows(CONTACTS, DAYS, seed=5)
    fs.write_feature_export(rows, fs.export_path(settings))
    store = fs.build_store(settings)
    fs.apply_definitions(store, fs.export_path(settings))
    return store, rows


def _newest(rows: pa.Table, contact_id: str) -> pd.Series:
    frame = _rows_frame(rows)
    frame = frame[frame["contact_id"] == contact_id].sort_values("feature_ts")
    return frame.iloc[-1]


def _online_sqlite_keys(store) -> set[bytes]:
    view = store.get_feature_view(fs.FEATURE_VIEW)
    table = fs.sqlite_table_id(store.project, view, False)
    with sqlite3.connect(SqliteOnlineStore._get_db_path(store.config)) as conn:
        return {row[0] for row in conn.execute(f'SELECT DISTINCT entity_key FROM "{table}"')}


def test_store_paths_follow_journey_home(settings):
    store = fs.build_store(settings)
    assert store.config.online_store.path == str(settings.feast_dir / "online.db")
    assert store.config.registry.path == str(settings.feast_dir / "registry.db")
    assert store.config.entity_key_serialization_version == 3
    assert store.config.offline_store.type == "duckdb"


def test_definitions_cover_every_contract_feature(tmp_path):
    definitions = fs.feature_definitions(tmp_path / "x.parquet")
    view = definitions.feature_view
    assert [f.name for f in view.features] == list(FEATURES)
    types = {f.name: str(f.dtype) for f in view.features}
    assert types["spend_30d"] == "Float64"
    assert types["orders_30d"] == "Int32"
    assert types["lifecycle_stage"] == "String"
    assert view.entities == ["contact"]
    assert view.ttl.days >= 3650
    assert definitions.source.timestamp_field == "feature_ts"
    assert definitions.source.created_timestamp_column == "created_ts"
    assert definitions.feature_service.name == "next_best_action"


def test_materialize_then_online_read_serves_newest_row(settings, feast_store):
    store, rows = feast_store
    summary = fs.materialize_latest(store, settings)
    assert summary["contacts"] == CONTACTS
    assert summary["rows_written"] == CONTACTS
    assert summary["newest_feature_ts"] == datetime(2026, 1, DAYS, tzinfo=UTC)
    assert fs.online_row_count(store) == CONTACTS

    served = fs.online_features(store, ["C-0000007", "C-9999999", "C-0000003"])
    assert list(served.index) == ["C-0000007", "C-9999999", "C-0000003"]
    assert list(served.columns) == list(FEATURES)
    for contact_id in ("C-0000007", "C-0000003"):
        newest = _newest(rows, contact_id)
        for name in FEATURES:
            assert fs.values_equal(newest[name], served.loc[contact_id, name]), (contact_id, name)
    # an unknown contact is an all-null row, not an error
    assert served.loc["C-9999999"].isna().all()
    assert str(served["orders_30d"].dtype) == "Int32"


def test_materialization_is_incremental(settings, feast_store):
    store, rows = feast_store
    fs.materialize_latest(store, settings)
    again = fs.materialize_latest(store, settings)
    assert again["rows_written"] == 0
    assert again["unchanged"] == CONTACTS

    # One contact's newest row is recomputed with a new value: only it is written.
    last_day = datetime(2026, 1, DAYS, tzinfo=UTC)
    changed = _replace_rows(rows, "C-0000011", last_day, spend_90d=4321.5)
    fs.write_feature_export(changed, fs.export_path(settings))
    third = fs.materialize_latest(store, settings)
    assert third["rows_written"] == 1
    assert fs.online_features(store, ["C-0000011"]).loc["C-0000011", "spend_90d"] == 4321.5

    # A change in an older row does not touch the online store.
    older = _replace_rows(changed, "C-0000012", datetime(2026, 1, 1, tzinfo=UTC), spend_90d=1.0)
    fs.write_feature_export(older, fs.export_path(settings))
    assert fs.materialize_latest(store, settings)["rows_written"] == 0
    assert fs.materialize_latest(store, settings, full=True)["rows_written"] == CONTACTS


def test_a_wiped_online_store_is_rewritten_in_full(settings, feast_store):
    store, _ = feast_store
    fs.materialize_latest(store, settings)
    # The online rows vanish behind the ledger's back (a new database, a flushed Redis).
    fs.erase_contacts(store, [f"C-{i:07d}" for i in range(CONTACTS)])
    assert fs.online_row_count(store) == 0
    summary = fs.materialize_latest(store, settings)
    assert summary["full"]
    assert summary["rows_written"] == CONTACTS
    assert fs.online_row_count(store) == CONTACTS


def test_small_batches_store_the_same_rows(settings, feast_store):
    store, _ = feast_store
    summary = fs.materialize_latest(store, settings, batch_size=7)
    assert summary["rows_written"] == CONTACTS
    assert fs.online_row_count(store) == CONTACTS
    assert fs.check_parity(store, settings, sample_size=CONTACTS, seed=0).passed


def test_parity_passes_then_fails_when_an_online_value_is_tampered_with(settings, feast_store):
    store, rows = feast_store
    fs.materialize_latest(store, settings)
    result = fs.check_parity(store, settings, sample_size=CONTACTS, seed=3)
    assert result.passed, result.summary()
    assert result.sampled == CONTACTS
    assert result.compared_values == CONTACTS * len(FEATURES)

    # Overwrite one online value through Feast's own write path, same timestamps.
    newest = _newest(rows, "C-0000021")
    tampered = pd.DataFrame([newest]).reset_index(drop=True)
    tampered = pa.Table.from_pandas(tampered, preserve_index=False)
    tampered = fs._conform(tampered.select(["contact_id", "feature_ts", "created_ts", *FEATURES]))
    tampered = tampered.set_column(
        tampered.schema.get_field_index("tenure_days"),
        "tenure_days",
        pa.array([int(newest["tenure_days"]) + 1], pa.int32()),
    )
    store.write_to_online_store(fs.FEATURE_VIEW, tampered.to_pandas(types_mapper=pd.ArrowDtype))

    failed = fs.check_parity(store, settings, sample_size=CONTACTS, seed=3)
    assert not failed.passed
    assert failed.mismatched_contacts == ["C-0000021"]
    (mismatch,) = failed.mismatches
    assert mismatch.feature == "tenure_days"
    assert mismatch.online == mismatch.offline + 1
    assert "C-0000021" in failed.summary()


def test_parity_reports_contacts_missing_online(settings, feast_store):
    store, _ = feast_store
    fs.materialize_latest(store, settings)
    fs.erase_contacts(store, ["C-0000001"])
    result = fs.check_parity(store, settings, sample_size=CONTACTS, seed=0)
    assert not result.passed
    assert result.missing_online == ["C-0000001"]


def test_values_equal_treats_nulls_and_float_noise_as_equal():
    assert fs.values_equal(None, float("nan"))
    assert fs.values_equal(pd.NA, None)
    assert fs.values_equal(0.1 + 0.2, 0.3)
    assert fs.values_equal(3, 3.0)
    assert not fs.values_equal(3, 4)
    assert not fs.values_equal(None, 0)
    assert not fs.values_equal(0.0, None)
    assert fs.values_equal("mql", "mql")
    assert not fs.values_equal("mql", "sql")


def test_training_set_never_leaks_a_feature_written_after_the_decision(settings, feast_store):
    store, rows = feast_store
    # Day 3's row of C-0000004 carries a value no earlier row has.
    day3 = datetime(2026, 1, 3, tzinfo=UTC)
    leaky = _replace_rows(rows, "C-0000004", day3, spend_90d=999_999.0, last_action="offer_a")
    fs.write_feature_export(leaky, fs.export_path(settings))
    day2_row = _newest(
        leaky.filter(
            pc.less(leaky.column("feature_ts"), pa.scalar(day3, pa.timestamp("us", "UTC")))
        ),
        "C-0000004",
    )
    decisions = pd.DataFrame(
        {
            "contact_id": ["C-0000004", "C-0000004", "C-0000004", "C-0000005"],
            "event_timestamp": [
                "2026-01-02 23:59:59+00:00",  # one second before day 3's cutoff
                "2026-01-03 00:00:00+00:00",  # at the cutoff: day 3's row applies
                "2025-12-31 12:00:00+00:00",  # before any feature row
                "2026-01-02 08:00:00+00:00",
            ],
            "reward": [1.5, 0.0, 2.0, -5.0],
            "action": ["offer_a", "no_offer", "offer_b", "offer_a"],
        }
    )
    training = fs.training_set(store, decisions)
    assert list(training.columns[:4]) == ["contact_id", "event_timestamp", "reward", "action"]
    assert list(training["reward"]) == [1.5, 0.0, 2.0, -5.0]
    assert training.loc[0, "spend_90d"] == pytest.approx(day2_row["spend_90d"])
    assert training.loc[0, "spend_90d"] != 999_999.0
    assert training.loc[0, "tenure_days"] == day2_row["tenure_days"]
    assert training.loc[1, "spend_90d"] == 999_999.0
    assert training.loc[1, "last_action"] == "offer_a"
    assert training.loc[2, list(FEATURES)].isna().all()
    # no decision before day 3's cutoff sees the day 3 value
    before = training["event_timestamp"] < pd.Timestamp(day3)
    assert not (training.loc[before, "spend_90d"] == 999_999.0).any()


def test_erasure_leaves_no_online_row(settings, feast_store):
    store, _ = feast_store
    fs.materialize_latest(store, settings)
    key = serialize_entity_key(fs._entity_key("C-0000009"), entity_key_serialization_version=3)
    assert key in _online_sqlite_keys(store)

    assert fs.erase_contacts(store, ["C-0000009", "C-0000010"], settings=settings) == 2
    assert key not in _online_sqlite_keys(store)
    assert fs.online_row_count(store) == CONTACTS - 2
    assert fs.online_features(store, ["C-0000009"]).loc["C-0000009"].isna().all()
    # the ledger forgot them, so the next run writes them back while they are in the export
    assert fs.materialize_latest(store, settings)["rows_written"] == 2


def test_contact_leaving_the_export_is_erased_online_on_the_next_run(settings, feast_store):
    store, rows = feast_store
    fs.materialize_latest(store, settings)
    remaining = rows.filter(pc.not_equal(rows.column("contact_id"), "C-0000030"))
    fs.write_feature_export(remaining, fs.export_path(settings))
    summary = fs.materialize_latest(store, settings)
    assert summary["erased"] == 1
    assert summary["rows_written"] == 0
    key = serialize_entity_key(fs._entity_key("C-0000030"), entity_key_serialization_version=3)
    assert key not in _online_sqlite_keys(store)
    assert fs.online_offline_counts(store, settings) == {
        "offline_contacts": CONTACTS - 1,
        "online_contacts": CONTACTS - 1,
    }


def test_feature_freshness_measures_the_lag_of_what_is_online(settings, feast_store):
    store, _ = feast_store
    now = datetime(2026, 1, 4, 6, tzinfo=UTC)
    assert fs.feature_freshness(settings, now).newest_feature_ts is None
    fs.materialize_latest(store, settings)
    freshness = fs.feature_freshness(settings, now)
    assert freshness.newest_feature_ts == datetime(2026, 1, DAYS, tzinfo=UTC)
    assert freshness.lag_hours == pytest.approx(30.0)
    assert freshness.contacts == CONTACTS
    assert fs.feature_freshness(settings, now, online=False).lag_hours == pytest.approx(30.0)
    with pytest.raises(ValueError, match="timezone"):
        fs.feature_freshness(settings, datetime(2026, 1, 4))


def test_an_export_missing_contract_columns_is_refused(settings, feast_store):
    store, rows = feast_store
    fs.write_feature_export(rows.drop(["spend_30d"]), fs.export_path(settings))
    with pytest.raises(ValueError, match="spend_30d"):
        fs.materialize_latest(store, settings)


def test_an_empty_export_writes_nothing(settings, feast_store):
    store, rows = feast_store
    fs.write_feature_export(rows.slice(0, 0), fs.export_path(settings))
    summary = fs.materialize_latest(store, settings)
    assert summary["rows_written"] == 0
    assert summary["newest_feature_ts"] is None


def test_connection_strings_for_production():
    assert fs.redis_connection_string("redis://127.0.0.1:6379/2") == "127.0.0.1:6379,db=2"
    assert (
        fs.redis_connection_string("rediss://:s3cret@cache:6380")
        == "cache:6380,password=s3cret,ssl=true"
    )
    assert fs.redis_connection_string("cache:6379,db=1") == "cache:6379,db=1"
    assert (
        fs.sql_registry_url("postgresql://feast@db:5432/feast")
        == "postgresql+psycopg2://feast@db:5432/feast"
    )
