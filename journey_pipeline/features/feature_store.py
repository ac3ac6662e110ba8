"""The Feast feature store: definitions, online materialization, parity, training sets, erasure.

Offline, Feast's DuckDB store reads the Parquet export of the ``contact_features_daily`` mart
(one row per contact and day, see :mod:`journey_pipeline.features.contract`). Online, each
contact holds exactly its newest offline row: SQLite under ``JOURNEY_HOME/feast`` locally,
Redis in production. Everything here is plain Python (no Dagster) so the decision service,
tests and notebooks use the same functions as the assets.

The definitions are built by :func:`feature_definitions` only; ``feature_repo/features.py``
(what ``feast apply`` reads) and :func:`apply_definitions` both call it.
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import time
import warnings
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource, ValueType
from feast.errors import FeatureServiceNotFoundException
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.offline_stores.duckdb import DuckDBOfflineStoreConfig
from feast.infra.online_stores.helpers import _redis_key, _redis_key_prefix
from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig
from feast.infra.online_stores.sqlite import SqliteOnlineStore, SqliteOnlineStoreConfig
from feast.infra.online_stores.sqlite import _table_id as sqlite_table_id
from feast.infra.registry.sql import SqlRegistryConfig
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import RegistryConfig, RepoConfig
from feast.types import Float64, Int32, String

from journey_pipeline.features.contract import (
    ACQUISITION_CHANNELS,
    ENTITY_KEY,
    EXPORT_FILE,
    FEATURE_SERVICE,
    FEATURE_VIEW,
    FEATURES,
    LIFECYCLE_STAGES,
    TIMESTAMP_FIELD,
)
from journey_pipeline.settings import Settings

PROJECT = "journey_pipeline"
ENTITY = "contact"
CREATED_FIELD = "created_ts"
FEATURE_DATE_FIELD = "feature_date"
ENTITY_KEY_SERIALIZATION_VERSION = 3
# The rows are daily snapshots, so the TTL only has to outlive any gap between a contact's
# rows; ten years keeps every historical row joinable.
FEATURE_TTL = timedelta(days=3650)

# Contract (DuckDB) type -> Feast type. INTEGER is 32-bit in DuckDB and in the Parquet export.
FEAST_TYPES = {"DOUBLE": Float64, "INTEGER": Int32, "VARCHAR": String}
ARROW_TYPES = {"DOUBLE": pa.float64(), "INTEGER": pa.int32(), "VARCHAR": pa.string()}


# --------------------------------------------------------------------------------------------
# Definitions and the store
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureDefinitions:
    """The Feast objects of the project: entity, Parquet source, feature view and service."""

    entity: Entity
    source: FileSource
    feature_view: FeatureView
    feature_service: FeatureService

    def objects(self) -> list[Any]:
        """All objects, in the order ``FeatureStore.apply`` accepts them."""
        return [self.entity, self.source, self.feature_view, self.feature_service]


def export_path(settings: Settings) -> Path:
    """Path of the Parquet export of the feature mart that Feast reads offline."""
    return settings.feature_exports_dir / EXPORT_FILE


def feature_definitions(parquet_path: str | Path) -> FeatureDefinitions:
    """Build the entity ``contact``, the FileSource over ``parquet_path``, the feature view
    ``contact_features`` (every contract feature) and the feature service ``next_best_action``."""
    contact = Entity(
        name=ENTITY,
        join_keys=[ENTITY_KEY],
        value_type=ValueType.STRING,
        description="A CRM contact, keyed by the CRM's contact id.",
    )
    source = FileSource(
        name="contact_features_daily",
        path=str(Path(parquet_path).absolute()),
        timestamp_field=TIMESTAMP_FIELD,
        created_timestamp_column=CREATED_FIELD,
        description="dbt export of the contact x day feature mart.",
    )
    feature_view = FeatureView(
        name=FEATURE_VIEW,
        entities=[contact],
        ttl=FEATURE_TTL,
        schema=[Field(name=ENTITY_KEY, dtype=String)]
        + [Field(name=name, dtype=FEAST_TYPES[typ]) for name, typ in FEATURES.items()],
        source=source,
        online=True,
        description="Daily contact features; the row for day D uses only events before D.",
    )
    feature_service = FeatureService(
        name=FEATURE_SERVICE,
        features=[feature_view],
        description="Context of the next-best-action decision model.",
    )
    return FeatureDefinitions(contact, source, feature_view, feature_service)


def redis_connection_string(url: str) -> str:
    """Turn ``redis://[:password@]host:port[/db]`` into Feast's ``host:port,db=N,...`` form."""
    if "://" not in url:
        return url  # already in Feast's form
    parsed = urlparse(url)
    parts = [f"{parsed.hostname or 'localhost'}:{parsed.port or 6379}"]
    db = parsed.path.lstrip("/")
    if db:
        parts.append(f"db={int(db)}")
    if parsed.username and parsed.username != "default":
        parts.append(f"username={unquote(parsed.username)}")
    if parsed.password:
        parts.append(f"password={unquote(parsed.password)}")
    if parsed.scheme == "rediss":
        parts.append("ssl=true")
    return ",".join(parts)


def sql_registry_url(dsn: str) -> str:
    """SQLAlchemy URL of the SQL registry for a PostgreSQL DSN, on the installed psycopg2."""
    for prefix in ("postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+psycopg2://" + dsn[len(prefix) :]
    return dsn


def repo_config(settings: Settings, *, project: str = PROJECT) -> RepoConfig:
    """The RepoConfig for the settings profile.

    local: file registry and SQLite online store under ``settings.feast_dir``.
    production: SQL registry on ``settings.postgres_dsn`` and Redis at ``settings.redis_url``.
    The offline store is DuckDB over Parquet in both.
    """
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    if settings.is_production:
        if not settings.redis_url or not settings.postgres_dsn:
            raise ValueError(
                "the production feature store needs JOURNEY_REDIS_URL (online store) and "
                "JOURNEY_POSTGRES_DSN (Feast SQL registry)"
            )
        registry: RegistryConfig = SqlRegistryConfig(
            registry_type="sql",
            path=sql_registry_url(settings.postgres_dsn),
            cache_ttl_seconds=60,
            sqlalchemy_config_kwargs={"echo": False, "pool_pre_ping": True},
        )
        online_store: Any = RedisOnlineStoreConfig(
            connection_string=redis_connection_string(settings.redis_url),
            # Feast's Redis writes skip a row whose timestamp is not newer than the stored
            # one, which would drop a recomputed row for the same day; materialize_latest
            # only ever writes each contact's newest row, so the check is not needed.
            skip_dedup=True,
        )
    else:
        registry = RegistryConfig(
            path=str(settings.feast_dir / "registry.db"), cache_ttl_seconds=60
        )
        online_store = SqliteOnlineStoreConfig(path=str(settings.feast_dir / "online.db"))
    return RepoConfig(
        project=project,
        provider="local",
        registry=registry,
        offline_store=DuckDBOfflineStoreConfig(),
        online_store=online_store,
        entity_key_serialization_version=ENTITY_KEY_SERIALIZATION_VERSION,
        repo_path=settings.home,
    )


def build_store(settings: Settings, *, project: str = PROJECT) -> FeatureStore:
    """A FeatureStore whose registry and online store follow ``settings.home``/the profile."""
    return FeatureStore(config=repo_config(settings, project=project))


def apply_definitions(store: FeatureStore, parquet_path: str | Path | None = None) -> list[str]:
    """Register the project's Feast objects (and create the online tables); returns their names.

    ``parquet_path`` defaults to the export under the store's home (its ``repo_path``).
    """
    if parquet_path is None:
        parquet_path = Path(store.config.repo_path) / "features" / EXPORT_FILE
    definitions = feature_definitions(parquet_path)
    store.apply(definitions.objects())
    return [obj.name for obj in definitions.objects()]


# --------------------------------------------------------------------------------------------
# Reading the offline export
# --------------------------------------------------------------------------------------------

FeatureInput = pd.DataFrame | pa.Table | str | Path


def _relation(con: duckdb.DuckDBPyConnection, features: FeatureInput) -> str:
    """Register ``features`` (DataFrame, Arrow table or Parquet path) as view ``feature_rows``."""
    if isinstance(features, str | Path):
        path = Path(features)
        if not path.exists():
            raise FileNotFoundError(
                f"feature export {path} does not exist: build the dbt feature marts first"
            )
        quoted = str(path).replace("'", "''")
        con.execute(f"CREATE VIEW feature_rows AS SELECT * FROM read_parquet('{quoted}')")
    else:
        con.register("feature_rows", features)
    missing = {ENTITY_KEY, TIMESTAMP_FIELD, CREATED_FIELD, *FEATURES} - {
        row[0] for row in con.execute("DESCRIBE feature_rows").fetchall()
    }
    if missing:
        raise ValueError(f"feature rows lack contract columns: {sorted(missing)}")
    return "feature_rows"


_NEWEST_SQL = """
SELECT {entity}, {ts}, {created}, {features},
       hash({ts}, {created}, {features}) AS row_hash
FROM feature_rows
QUALIFY row_number() OVER (
    PARTITION BY {entity} ORDER BY {ts} DESC, {created} DESC NULLS LAST) = 1
"""


def _newest_sql() -> str:
    return _NEWEST_SQL.format(
        entity=ENTITY_KEY,
        ts=TIMESTAMP_FIELD,
        created=CREATED_FIELD,
        features=", ".join(f'"{name}"' for name in FEATURES),
    )


def latest_offline_rows(features: FeatureInput) -> pa.Table:
    """The newest row per contact (latest ``feature_ts``, then ``created_ts``) as Arrow,
    with contract types and a ``row_hash`` of timestamps and values."""
    with duckdb.connect() as con:
        _relation(con, features)
        return _conform(con.sql(_newest_sql()).to_arrow_table())


def _conform(table: pa.Table) -> pa.Table:
    """Cast feature columns to the contract's Arrow types and timestamps to UTC."""
    columns, names = [], []
    for name in table.column_names:
        column = table.column(name)
        if name in FEATURES:
            column = column.cast(ARROW_TYPES[FEATURES[name]])
        elif name in (TIMESTAMP_FIELD, CREATED_FIELD):
            column = column.cast(pa.timestamp("us", tz="UTC"))
        columns.append(column)
        names.append(name)
    return pa.Table.from_arrays(columns, names=names)


# --------------------------------------------------------------------------------------------
# Materialization
# --------------------------------------------------------------------------------------------


def ledger_path(settings: Settings, project: str = PROJECT) -> Path:
    """Where :func:`materialize_latest` records the (contact, row hash) pairs it has written
    for the Feast ``project``."""
    return settings.feast_dir / f"online_ledger_{project}.parquet"


def _read_ledger(path: Path) -> pa.Table:
    if path.exists():
        return pq.read_table(path)
    return _empty_ledger()


def _empty_ledger() -> pa.Table:
    return pa.table(
        {
            ENTITY_KEY: pa.array([], pa.string()),
            TIMESTAMP_FIELD: pa.array([], pa.timestamp("us", tz="UTC")),
            "row_hash": pa.array([], pa.uint64()),
        }
    )


def _write_ledger(path: Path, ledger: pa.Table) -> None:
    # Replace atomically: a crash mid-write must not leave a ledger claiming unwritten rows.
    tmp = path.with_suffix(".tmp")
    pq.write_table(ledger, tmp)
    os.replace(tmp, path)


def _online_frame(batch: pa.Table) -> pd.DataFrame:
    """An Arrow batch as the DataFrame ``write_to_online_store`` takes.

    Arrow-backed dtypes keep nullable integers as int32 with nulls; Feast converts the
    frame back to Arrow without a copy.
    """
    return batch.to_pandas(types_mapper=pd.ArrowDtype)


def _tune_sqlite(store: FeatureStore) -> None:
    """Relax durability of the SQLite online store for bulk loads.

    The online store is a cache rebuilt from the offline export (the ledger makes a rerun
    rewrite anything lost), so fsync on every commit buys nothing here.
    """
    online_store = store._get_provider().online_store
    conn = online_store._get_conn(store.config)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")
    # Another process writing (a second run, an erasure) waits instead of failing.
    conn.execute("PRAGMA busy_timeout=60000")


def write_online(store: FeatureStore, rows: pa.Table, *, batch_size: int = 50_000) -> int:
    """Write contract-shaped ``rows`` (one per contact) to the online store through Feast's
    ``write_to_online_store``, ``batch_size`` contacts per call; returns the rows written.

    Each call is one online-store transaction, so a batch bounds both memory (Feast turns
    every value into a protobuf first) and how long the SQLite write lock is held.
    """
    rows = rows.select([ENTITY_KEY, TIMESTAMP_FIELD, CREATED_FIELD, *FEATURES])
    if isinstance(store._get_provider().online_store, SqliteOnlineStore):
        _tune_sqlite(store)
    written = 0
    for offset in range(0, rows.num_rows, batch_size):
        batch = rows.slice(offset, batch_size).combine_chunks()
        with warnings.catch_warnings():
            # A batch whose features are all null is skipped by Feast with a warning; in the
            # contract counts are never null, so such a batch cannot carry a real row.
            warnings.simplefilter("ignore", UserWarning)
            store.write_to_online_store(FEATURE_VIEW, _online_frame(batch))
        written += batch.num_rows
    return written


def materialize_latest(
    store: FeatureStore,
    settings: Settings,
    features: FeatureInput | None = None,
    *,
    batch_size: int = 50_000,
    full: bool = False,
    erase_missing: bool = True,
) -> dict[str, Any]:
    """Bring the online store to the newest offline row of every contact, incrementally.

    ``features`` is the complete feature export (default: the Parquet file under
    ``settings``), as a path, DataFrame or Arrow table. Only contacts whose newest row
    (timestamps or any value) differs from what the last run wrote are written, unless
    ``full`` or the online store no longer holds what the ledger says (then everything is
    rewritten). Contacts that left the export (erased) are deleted online when
    ``erase_missing``. ``batch_size`` is passed to :func:`write_online`.

    Returns ``contacts`` (in the export), ``rows_written``, ``unchanged``, ``erased``,
    ``newest_feature_ts`` (None for an empty export), ``full`` (whether everything was
    rewritten) and ``seconds``.
    """
    started = time.perf_counter()
    if features is None:
        features = export_path(settings)
    newest = latest_offline_rows(features)
    ledger_file = ledger_path(settings, store.project)
    ledger = _read_ledger(ledger_file)
    full = full or not _ledger_matches_online(store, ledger)
    with duckdb.connect() as con:
        con.register("newest", newest)
        con.register("ledger", ledger.select([ENTITY_KEY, "row_hash"]))
        # On a full rewrite nothing counts as already online.
        changed = con.sql(
            f"""SELECT n.* EXCLUDE (row_hash) FROM newest n
                LEFT JOIN ledger l ON l.{ENTITY_KEY} = n.{ENTITY_KEY} AND NOT {full}
                WHERE l.row_hash IS DISTINCT FROM n.row_hash
                ORDER BY n.{ENTITY_KEY}"""
        ).to_arrow_table()
        vanished = [
            row[0]
            for row in con.execute(
                f"SELECT {ENTITY_KEY} FROM ledger ANTI JOIN newest USING ({ENTITY_KEY})"
            ).fetchall()
        ]
    written = write_online(store, _conform(changed), batch_size=batch_size)
    erased = erase_contacts(store, vanished) if erase_missing and vanished else 0
    _write_ledger(ledger_file, newest.select([ENTITY_KEY, TIMESTAMP_FIELD, "row_hash"]))
    newest_ts = pc.max(newest.column(TIMESTAMP_FIELD)).as_py() if newest.num_rows else None
    return {
        "contacts": newest.num_rows,
        "rows_written": written,
        "unchanged": newest.num_rows - written,
        "erased": erased,
        "newest_feature_ts": newest_ts,
        "full": full,
        "seconds": time.perf_counter() - started,
    }


def _ledger_matches_online(store: FeatureStore, ledger: pa.Table, sample_size: int = 50) -> bool:
    """Spot-check that contacts the ledger records are really online.

    A wiped or replaced online store (a new SQLite file, a flushed Redis) would otherwise
    make the incremental run skip contacts it believes are served.
    """
    if ledger.num_rows == 0:
        return True
    rng = np.random.default_rng()
    picks = rng.choice(ledger.num_rows, size=min(sample_size, ledger.num_rows), replace=False)
    contact_ids = ledger.column(ENTITY_KEY).take(pa.array(picks)).to_pylist()
    served = online_features(store, contact_ids)
    return not served.isna().all(axis=1).any()


# --------------------------------------------------------------------------------------------
# Online reads, parity and freshness
# --------------------------------------------------------------------------------------------


# Entity keys per SQLite statement, below SQLite's bound on host parameters.
SQLITE_MAX_KEYS = 900


STALE_REGISTRY_FIX = (
    "apply the definitions and fill the online store by materializing the `online_features` "
    "asset (`dagster asset materialize -m journey_pipeline.definitions --select "
    "online_features --partition YYYY-MM-DD`, or a `journey demo` day), or register them "
    "alone with `JOURNEY_HOME=... feast -c feature_repo apply`"
)


class StaleRegistryError(ValueError):
    """The Feast registry does not hold the project's feature service as the contract says."""


class OnlineFeatureReader:
    """Reads the feature service's features straight from Feast's online store.

    ``FeatureStore.get_online_features`` rebuilds the feature service from its registry proto,
    validates and regroups the request and assembles a response object on every call; for a
    decision about one contact that costs far more than the read itself. This reader resolves
    the feature service once (again every ``refresh_s`` seconds, the registry cache's TTL) and
    per call reads the rows from the provider's online store: on Redis (and any other store)
    with the store's own ``online_read``, on SQLite with that method's query on the same table
    and serialized entity keys, minus the event timestamps it converts and then drops. The
    values are decoded into contract-typed columns; :func:`feast_online_features` is the
    reference path through ``get_online_features`` they are tested against.

    One reader per store (:func:`online_reader`); safe to share between threads as far as the
    online store's connection is (Feast's SQLite connection and redis-py client are).
    """

    def __init__(self, store: FeatureStore, *, refresh_s: float | None = None) -> None:
        self.store = store
        ttl = getattr(store.config.registry, "cache_ttl_seconds", None)
        self.refresh_s = float(refresh_s if refresh_s is not None else ttl or 60)
        self._views: list[tuple[FeatureView, list[str]]] | None = None
        self._resolved_at = -math.inf
        self._lock = threading.Lock()

    def _resolved(self) -> list[tuple[FeatureView, list[str]]]:
        """(feature view, requested feature names) of the feature service, cached."""
        views = self._views
        if views is not None and time.monotonic() - self._resolved_at < self.refresh_s:
            return views
        with self._lock:
            if self._views is None or time.monotonic() - self._resolved_at >= self.refresh_s:
                try:
                    service = self.store.get_feature_service(FEATURE_SERVICE, allow_cache=True)
                except FeatureServiceNotFoundException as exc:
                    raise StaleRegistryError(
                        f"the Feast registry has no feature service {FEATURE_SERVICE!r}: "
                        f"{STALE_REGISTRY_FIX}"
                    ) from exc
                resolved = []
                for projection in service.feature_view_projections:
                    view = self.store.get_feature_view(projection.name, allow_registry_cache=True)
                    resolved.append((view, [f.name for f in projection.features]))
                missing = set(FEATURES) - {n for _, names in resolved for n in names}
                if missing:
                    raise StaleRegistryError(
                        f"the feature service {FEATURE_SERVICE!r} lacks the contract features "
                        f"{sorted(missing)}: the registry is older than the contract; "
                        f"{STALE_REGISTRY_FIX}"
                    )
                self._views, self._resolved_at = resolved, time.monotonic()
            return self._views

    def read(self, contact_ids: Sequence[str]) -> pd.DataFrame:
        """Same result as :func:`online_features` (which calls this)."""
        ids = [str(contact_id) for contact_id in contact_ids]
        return _typed_frame(ids, self.read_values(ids))

    def read_values(self, contact_ids: Sequence[str]) -> dict[str, list[Any]]:
        """Feature name -> one plain Python value (None when absent) per contact id."""
        ids = [str(contact_id) for contact_id in contact_ids]
        values: dict[str, list[Any]] = {name: [None] * len(ids) for name in FEATURES}
        if not ids:
            return values
        online_store = self.store._get_provider().online_store
        keys = [_entity_key(contact_id) for contact_id in ids]
        for view, names in self._resolved():
            wanted = [name for name in names if name in values]
            if isinstance(online_store, SqliteOnlineStore):
                self._read_sqlite(online_store, view, keys, wanted, values)
                continue
            # online_read may append bookkeeping fields to the list it is given: pass a copy.
            rows = online_store.online_read(self.store.config, view, keys, list(names))
            for i, (_, row) in enumerate(rows):
                if not row:
                    continue
                for name in wanted:
                    proto = row.get(name)
                    if proto is not None:
                        _put(values[name], i, proto)
        return values

    def _read_sqlite(
        self,
        online_store: SqliteOnlineStore,
        view: FeatureView,
        keys: list[EntityKeyProto],
        wanted: list[str],
        values: dict[str, list[Any]],
    ) -> None:
        """The rows ``SqliteOnlineStore.online_read`` reads (same table, same serialized
        keys), without the event timestamps it converts for every value and then drops."""
        config = self.store.config
        version = config.entity_key_serialization_version
        serialized = [
            serialize_entity_key(key, entity_key_serialization_version=version) for key in keys
        ]
        positions: dict[bytes, list[int]] = {}
        for i, key in enumerate(serialized):
            positions.setdefault(key, []).append(i)
        table = sqlite_table_id(
            config.project, view, config.registry.enable_online_feature_view_versioning
        )
        wanted_set = set(wanted)
        conn = online_store._get_conn(config)
        unique = list(positions)
        for start in range(0, len(unique), SQLITE_MAX_KEYS):
            chunk = unique[start : start + SQLITE_MAX_KEYS]
            rows = conn.execute(
                f'SELECT entity_key, feature_name, value FROM "{table}" '
                f"WHERE entity_key IN ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            for key, name, blob in rows:
                if name not in wanted_set:
                    continue
                proto = ValueProto()
                proto.ParseFromString(blob)
                column = values[name]
                for i in positions[key]:
                    _put(column, i, proto)


def _put(column: list[Any], i: int, proto: ValueProto) -> None:
    """Store the plain value of ``proto`` (left None when the proto holds no value)."""
    kind = proto.WhichOneof("val")
    if kind is not None and kind != "null_val":
        column[i] = getattr(proto, kind)


_readers: weakref.WeakKeyDictionary[FeatureStore, OnlineFeatureReader] = weakref.WeakKeyDictionary()
_readers_lock = threading.Lock()


def online_reader(store: FeatureStore) -> OnlineFeatureReader:
    """The :class:`OnlineFeatureReader` of ``store`` (created on first use)."""
    reader = _readers.get(store)
    if reader is None:
        with _readers_lock:
            reader = _readers.get(store)
            if reader is None:
                reader = _readers[store] = OnlineFeatureReader(store)
    return reader


def online_features(store: FeatureStore, contact_ids: Sequence[str]) -> pd.DataFrame:
    """Features of ``contact_ids`` from the online store, through the feature service.

    Returns one row per requested id (index ``contact_id``, in request order, duplicates
    kept), one column per contract feature with its contract dtype (:func:`typed_features`).
    A contact the store does not know comes back as an all-null row: the caller decides the
    fallback. Reads go through :class:`OnlineFeatureReader`; the values are those
    ``store.get_online_features`` returns for the feature service.
    """
    return online_reader(store).read(contact_ids)


def _typed_frame(ids: list[str], values: Mapping[str, list[Any]]) -> pd.DataFrame:
    """Contract-typed frame (index ``contact_id``) from per-feature lists of plain values."""
    n = len(ids)
    columns: dict[str, Any] = {}
    for name, typ in FEATURES.items():
        column = values[name]
        if typ == "INTEGER":
            mask = np.fromiter((v is None for v in column), dtype=bool, count=n)
            data = np.fromiter((0 if v is None else v for v in column), dtype=np.int32, count=n)
            columns[name] = pd.arrays.IntegerArray(data, mask)
        elif typ == "DOUBLE":
            columns[name] = np.fromiter(
                (math.nan if v is None else v for v in column), dtype=np.float64, count=n
            )
        else:
            columns[name] = np.array(column, dtype=object)
    return pd.DataFrame(columns, index=pd.Index(ids, name=ENTITY_KEY, dtype=object))


def feast_online_features(store: FeatureStore, contact_ids: Sequence[str]) -> pd.DataFrame:
    """:func:`online_features` through ``store.get_online_features`` and its response's
    ``to_df`` (the reference the lean reader is checked against)."""
    ids = [str(contact_id) for contact_id in contact_ids]
    columns = list(FEATURES)
    if not ids:
        return pd.DataFrame(columns=columns, index=pd.Index([], name=ENTITY_KEY))
    response = store.get_online_features(
        features=store.get_feature_service(FEATURE_SERVICE, allow_cache=True),
        entity_rows={ENTITY_KEY: ids},
    )
    frame = response.to_df().set_index(ENTITY_KEY)
    return typed_features(frame[columns])


def typed_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Give contract feature columns their contract dtypes: INTEGER as nullable ``Int32``
    (Feast hands back floats with NaN), DOUBLE as ``float64``, VARCHAR as ``object``."""
    frame = frame.copy()
    for name, typ in FEATURES.items():
        if name not in frame.columns:
            continue
        if typ == "INTEGER":
            frame[name] = pd.array(pd.to_numeric(frame[name]), dtype="Int32")
        elif typ == "DOUBLE":
            frame[name] = pd.to_numeric(frame[name]).astype("float64")
        else:
            frame[name] = frame[name].astype(object).where(frame[name].notna(), None)
    return frame


@dataclass(frozen=True)
class FeatureMismatch:
    """One feature of one contact whose online value differs from the latest offline row."""

    contact_id: str
    feature: str
    offline: Any
    online: Any


@dataclass(frozen=True)
class ParityResult:
    """Outcome of :func:`check_parity` on a sample of contacts."""

    sampled: int
    compared_values: int
    mismatches: list[FeatureMismatch] = field(default_factory=list)
    missing_online: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.mismatches and not self.missing_online

    @property
    def mismatched_contacts(self) -> list[str]:
        return sorted({m.contact_id for m in self.mismatches})

    def summary(self) -> str:
        """One line for logs and asset check descriptions."""
        if self.passed:
            return f"{self.sampled} contacts, {self.compared_values} values: online == offline"
        shown = ", ".join(
            f"{m.contact_id}.{m.feature} offline={m.offline!r} online={m.online!r}"
            for m in self.mismatches[:5]
        )
        return (
            f"{len(self.mismatched_contacts)} of {self.sampled} contacts differ "
            f"({len(self.mismatches)} values), {len(self.missing_online)} missing online"
            + (f"; e.g. {shown}" if shown else "")
        )


def _is_null(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def values_equal(
    offline: Any, online: Any, *, rel_tol: float = 1e-9, abs_tol: float = 1e-9
) -> bool:
    """Feature value equality for parity: null == null (None/NaN/NA), numbers compared as
    floats within a tolerance, anything else with ``==``."""
    if _is_null(offline) or _is_null(online):
        return _is_null(offline) and _is_null(online)
    numeric = (int, float, np.integer, np.floating)
    if isinstance(offline, numeric) and isinstance(online, numeric):
        return math.isclose(float(offline), float(online), rel_tol=rel_tol, abs_tol=abs_tol)
    return offline == online


def _offline_source_path(store: FeatureStore) -> str:
    view = store.get_feature_view(FEATURE_VIEW)
    return FileSource.get_uri_for_file_path(store.config.repo_path, view.batch_source.path)


def check_parity(
    store: FeatureStore,
    settings: Settings | None = None,
    sample_size: int = 200,
    seed: int = 0,
    *,
    features: FeatureInput | None = None,
) -> ParityResult:
    """Compare online values with the latest offline row for a random sample of contacts.

    The offline side is the registered Parquet source (or ``features``) reduced to the newest
    row per contact, as materialization defines it; the sample is drawn with ``seed`` from
    its contacts. Floats are compared with a tolerance and null equals null.
    """
    if features is None:
        features = _offline_source_path(store) if settings is None else export_path(settings)
    newest = latest_offline_rows(features)
    if newest.num_rows == 0:
        return ParityResult(sampled=0, compared_values=0)
    all_ids = np.array(sorted(newest.column(ENTITY_KEY).to_pylist()), dtype=object)
    rng = np.random.default_rng(seed)
    picked = rng.choice(all_ids, size=min(sample_size, len(all_ids)), replace=False)
    offline = (
        newest.filter(pc.is_in(newest.column(ENTITY_KEY), pa.array(picked, pa.string())))
        .to_pandas(types_mapper=pd.ArrowDtype)
        .set_index(ENTITY_KEY)
    )
    online = online_features(store, list(offline.index))
    mismatches: list[FeatureMismatch] = []
    missing: list[str] = []
    compared = 0
    for contact_id, offline_row in offline.iterrows():
        online_row = online.loc[contact_id]
        if all(_is_null(online_row[name]) for name in FEATURES):
            missing.append(str(contact_id))
            continue
        for name in FEATURES:
            compared += 1
            offline_value, online_value = offline_row[name], online_row[name]
            if not values_equal(offline_value, online_value):
                mismatches.append(
                    FeatureMismatch(
                        str(contact_id), name, _plain(offline_value), _plain(online_value)
                    )
                )
    return ParityResult(
        sampled=len(offline),
        compared_values=compared,
        mismatches=mismatches,
        missing_online=missing,
    )


def _plain(value: Any) -> Any:
    """A numpy/pandas scalar as a plain Python value (for messages and metadata)."""
    if _is_null(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


@dataclass(frozen=True)
class Freshness:
    """How far the newest feature timestamp lags behind ``now``."""

    newest_feature_ts: datetime | None
    now: datetime
    contacts: int

    @property
    def lag(self) -> timedelta | None:
        return None if self.newest_feature_ts is None else self.now - self.newest_feature_ts

    @property
    def lag_hours(self) -> float | None:
        lag = self.lag
        return None if lag is None else lag.total_seconds() / 3600


def feature_freshness(
    settings: Settings, now: datetime, *, online: bool = True, project: str = PROJECT
) -> Freshness:
    """Lag of the newest ``feature_ts`` behind ``now`` (a timezone-aware datetime).

    ``online`` (default) measures what the online store holds, from the materialization
    ledger; otherwise the offline export. ``newest_feature_ts`` is None when there is
    nothing yet.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    if online:
        table = _read_ledger(ledger_path(settings, project))
    else:
        path = export_path(settings)
        table = (
            pq.read_table(path, columns=[ENTITY_KEY, TIMESTAMP_FIELD])
            if path.exists()
            else _empty_ledger()
        )
    newest = pc.max(table.column(TIMESTAMP_FIELD)).as_py() if table.num_rows else None
    if newest is not None and newest.tzinfo is None:
        newest = newest.replace(tzinfo=UTC)
    contacts = len(pc.unique(table.column(ENTITY_KEY))) if table.num_rows else 0
    return Freshness(newest_feature_ts=newest, now=now, contacts=contacts)


def online_row_count(store: FeatureStore) -> int | None:
    """Number of contacts held by the SQLite online store (None for other online stores)."""
    online_store = store._get_provider().online_store
    if not isinstance(online_store, SqliteOnlineStore):
        return None
    view = store.get_feature_view(FEATURE_VIEW)
    table = sqlite_table_id(
        store.config.project, view, store.config.registry.enable_online_feature_view_versioning
    )
    with sqlite3.connect(SqliteOnlineStore._get_db_path(store.config)) as conn:
        (count,) = conn.execute(f'SELECT count(DISTINCT entity_key) FROM "{table}"').fetchone()
    return int(count)


def online_offline_counts(store: FeatureStore, settings: Settings) -> dict[str, int]:
    """Contacts in the offline export (newest rows) and contacts held by the online store.

    SQLite counts distinct entity keys of the feature view's table; Redis counts the
    project's entity hashes with SCAN.
    """
    path = export_path(settings)
    offline = 0
    if path.exists():
        with duckdb.connect() as con:
            _relation(con, path)
            (offline,) = con.execute(
                f"SELECT count(DISTINCT {ENTITY_KEY}) FROM feature_rows"
            ).fetchone()
    online_store = store._get_provider().online_store
    if isinstance(online_store, RedisOnlineStore):
        client = online_store._get_client(store.config.online_store)
        pattern = _redis_key_prefix([ENTITY_KEY]) + b"*" + store.config.project.encode()
        online = sum(1 for _ in client.scan_iter(match=pattern, count=10_000))
    else:
        online = online_row_count(store) or 0
    return {"offline_contacts": int(offline), "online_contacts": int(online)}


# --------------------------------------------------------------------------------------------
# Erasure
# --------------------------------------------------------------------------------------------


def _entity_key(contact_id: str) -> EntityKeyProto:
    return EntityKeyProto(
        join_keys=[ENTITY_KEY], entity_values=[ValueProto(string_val=str(contact_id))]
    )


def erase_contacts(
    store: FeatureStore, contact_ids: Iterable[str], *, settings: Settings | None = None
) -> int:
    """Delete every online row of ``contact_ids`` (all feature views), on SQLite or Redis.

    With ``settings`` the contacts also leave the materialization ledger, so a later run
    does not believe they are online. Returns the number of contacts asked for.
    """
    ids = sorted({str(contact_id) for contact_id in contact_ids})
    if not ids:
        return 0
    online_store = store._get_provider().online_store
    version = store.config.entity_key_serialization_version
    if isinstance(online_store, SqliteOnlineStore):
        keys = [
            serialize_entity_key(_entity_key(c), entity_key_serialization_version=version)
            for c in ids
        ]
        versioned = store.config.registry.enable_online_feature_view_versioning
        conn = online_store._get_conn(store.config)
        with conn:
            for view in store.list_feature_views():
                table = sqlite_table_id(store.config.project, view, versioned)
                conn.executemany(
                    f'DELETE FROM "{table}" WHERE entity_key = ?', [(key,) for key in keys]
                )
    elif isinstance(online_store, RedisOnlineStore):
        client = online_store._get_client(store.config.online_store)
        # One hash per entity holds every feature view of the project: drop the whole key.
        keys = [_redis_key(store.config.project, _entity_key(c), version) for c in ids]
        with client.pipeline(transaction=False) as pipe:
            for start in range(0, len(keys), 10_000):
                pipe.delete(*keys[start : start + 10_000])
            pipe.execute()
    else:
        raise ValueError(
            f"erasure is implemented for the SQLite and Redis online stores, not "
            f"{type(online_store).__name__}"
        )
    if settings is not None:
        ledger_file = ledger_path(settings, store.project)
        if ledger_file.exists():
            ledger = pq.read_table(ledger_file)
            keep = pc.invert(pc.is_in(ledger.column(ENTITY_KEY), pa.array(ids, pa.string())))
            _write_ledger(ledger_file, ledger.filter(keep))
    return len(ids)


# --------------------------------------------------------------------------------------------
# Training sets
# --------------------------------------------------------------------------------------------

EVENT_TIMESTAMP = "event_timestamp"


def training_set(store: FeatureStore, entity_df: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time join of decision rows with the features as of each decision.

    ``entity_df`` has ``contact_id``, ``event_timestamp`` (the decision time) and any label
    columns; each row gets the contact's newest feature row with ``feature_ts`` at or before
    its timestamp (so never a value computed after the decision), through Feast's
    ``get_historical_features`` and the feature service. Rows without such a feature row keep
    null features. The result has the input's rows in the input's order.
    """
    missing = {ENTITY_KEY, EVENT_TIMESTAMP} - set(entity_df.columns)
    if missing:
        raise ValueError(f"entity_df lacks columns {sorted(missing)}")
    if entity_df.empty:
        return entity_df.assign(**{name: pd.Series(dtype=object) for name in FEATURES})
    rows = entity_df.copy()
    rows[EVENT_TIMESTAMP] = pd.to_datetime(rows[EVENT_TIMESTAMP], utc=True)
    # Feast reorders rows; a row number carried through restores the caller's order.
    order_column = "__training_row"
    rows[order_column] = np.arange(len(rows))
    job = store.get_historical_features(
        entity_df=rows, features=store.get_feature_service(FEATURE_SERVICE)
    )
    result = job.to_df().sort_values(order_column).set_index(order_column)
    result.index.name = None
    result = result.reset_index(drop=True)
    label_columns = [c for c in entity_df.columns if c not in (ENTITY_KEY, EVENT_TIMESTAMP)]
    return typed_features(result[[ENTITY_KEY, EVENT_TIMESTAMP, *label_columns, *FEATURES]])


# --------------------------------------------------------------------------------------------
# Contract-shaped rows without a warehouse
# --------------------------------------------------------------------------------------------


def synthetic_feature_rows(
    contacts: int,
    days: int = 1,
    *,
    seed: int = 0,
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC),
    id_prefix: str = "C-",
) -> pa.Table:
    """``contacts`` x ``days`` rows shaped like the dbt export (for benchmarks and tests).

    Values are random but plausible and follow the contract's null rules: contacts who never
    bought have null ``days_since_last_purchase``, no offer means null rates and last action.
    ``feature_ts`` is the day's 00:00 UTC cutoff, ``created_ts`` one hour later.
    """
    rng = np.random.default_rng(seed)
    n = contacts * days
    ids = np.char.add(id_prefix, np.char.zfill(np.arange(contacts).astype(str), 7))
    day_index = np.repeat(np.arange(days), contacts)
    cutoffs = pd.Timestamp(start).normalize() + pd.to_timedelta(day_index, unit="D")
    orders_90d = rng.poisson(0.8, n).astype(np.int32)
    orders_30d = np.minimum(rng.poisson(0.3, n), orders_90d).astype(np.int32)
    spend_90d = np.round(orders_90d * rng.gamma(2.0, 30.0, n), 2)
    spend_30d = np.round(
        spend_90d * np.where(orders_90d > 0, orders_30d / np.maximum(orders_90d, 1), 0), 2
    )
    offers = rng.poisson(1.0, n).astype(np.int32)
    opens = rng.binomial(offers, 0.4)
    clicks = rng.binomial(opens, 0.3)
    purchased = rng.random(n) < 0.6
    stage_rank = rng.integers(0, len(LIFECYCLE_STAGES), n).astype(np.int32)
    actions = np.array(["no_offer", "offer_a", "offer_b"], dtype=object)
    offered_ever = rng.random(n) < 0.7
    tenure = (rng.integers(0, 700, n) + day_index).astype(np.int32)
    channel = rng.integers(0, len(ACQUISITION_CHANNELS), n).astype(np.int32)

    def masked(values: np.ndarray, valid: np.ndarray, typ: pa.DataType) -> pa.Array:
        return pa.array(values, type=typ, mask=~valid)

    has_offers = offers > 0
    columns: dict[str, pa.Array] = {
        ENTITY_KEY: pa.array(np.tile(ids, days), pa.string()),
        FEATURE_DATE_FIELD: pa.array(cutoffs.date, pa.date32()),
        TIMESTAMP_FIELD: pa.array(cutoffs, pa.timestamp("us", tz="UTC")),
        CREATED_FIELD: pa.array(cutoffs + pd.Timedelta(hours=1), pa.timestamp("us", tz="UTC")),
        "spend_30d": pa.array(spend_30d, pa.float64()),
        "spend_90d": pa.array(spend_90d, pa.float64()),
        "orders_30d": pa.array(orders_30d, pa.int32()),
        "orders_90d": pa.array(orders_90d, pa.int32()),
        "avg_order_value_90d": masked(
            spend_90d / np.maximum(orders_90d, 1), orders_90d > 0, pa.float64()
        ),
        "product_views_7d": pa.array(rng.poisson(3.0, n), pa.int32()),
        "cart_abandons_14d": pa.array(rng.poisson(0.4, n), pa.int32()),
        "days_since_last_purchase": masked(rng.integers(0, 365, n), purchased, pa.int32()),
        "lifecycle_stage": pa.array(np.array(LIFECYCLE_STAGES, dtype=object)[stage_rank]),
        "lifecycle_stage_rank": pa.array(stage_rank, pa.int32()),
        "days_in_stage": pa.array(np.minimum(rng.integers(0, 200, n), tenure), pa.int32()),
        "tenure_days": pa.array(tenure, pa.int32()),
        "offers_received_30d": pa.array(offers, pa.int32()),
        "offer_open_rate_30d": masked(opens / np.maximum(offers, 1), has_offers, pa.float64()),
        "offer_click_rate_30d": masked(clicks / np.maximum(offers, 1), has_offers, pa.float64()),
        "last_action": masked(actions[rng.integers(0, len(actions), n)], offered_ever, pa.string()),
        "days_since_last_action": masked(rng.integers(0, 90, n), offered_ever, pa.int32()),
        "acquisition_channel": pa.array(np.array(ACQUISITION_CHANNELS, dtype=object)[channel]),
        "acquisition_channel_rank": pa.array(channel, pa.int32()),
        "loyalty_member": pa.array((rng.random(n) < 0.2).astype(np.int32), pa.int32()),
    }
    return pa.table(columns)


def write_feature_export(rows: pa.Table, path: str | Path) -> Path:
    """Write feature rows as the Parquet export Feast reads (atomically); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(rows, tmp)
    os.replace(tmp, path)
    return path
