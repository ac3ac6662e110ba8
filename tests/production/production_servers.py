"""Servers for the production-profile tests.

- The machine's PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) are shared: each test
  run creates its own databases (dropped afterwards) and uses an empty Redis logical database
  (its keys removed afterwards). Nothing here stops, restarts or flushes them.
- Fault tests that take a server down start a private one on a free port instead
  (:class:`PrivatePostgres`, :class:`PrivateRedis`) and stop only that one.
- Kafka is librdkafka's mock cluster. :class:`MockKafka` creates it through librdkafka's C API
  (the library bundled with confluent-kafka), which is also how a broker is taken down and
  brought back: ``rd_kafka_mock_broker_set_down`` / ``_set_up``.
"""

from __future__ import annotations

import ctypes
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
REDIS_PORT = 6379


def service_up(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout_s: float = 30.0, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


def dsn(dbname: str, port: int = PG_PORT) -> str:
    return f"postgresql://{PG_USER}@{PG_HOST}:{port}/{dbname}"


@contextmanager
def postgres_databases(*suffixes: str, port: int = PG_PORT) -> Iterator[list[str]]:
    """Create one uniquely named database per suffix; drop them all afterwards."""
    import psycopg2

    base = f"jp_prod_{uuid.uuid4().hex[:10]}"
    names = [f"{base}{suffix}" for suffix in suffixes]
    admin = psycopg2.connect(host=PG_HOST, port=port, user=PG_USER, dbname="postgres")
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            for name in names:
                cur.execute(f"CREATE DATABASE {name}")
        yield names
    finally:
        with admin.cursor() as cur:
            for name in names:
                cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@contextmanager
def empty_redis_database(port: int = REDIS_PORT) -> Iterator[str]:
    """The URL of a logical Redis database that holds no key (1..15, checked in a random
    order); every key in it is deleted afterwards (it was empty before: they are ours)."""
    import random

    import redis

    chosen = None
    for index in random.sample(range(1, 16), 15):
        client = redis.Redis(host=PG_HOST, port=port, db=index)
        if client.dbsize() == 0:
            chosen = index
            break
        client.close()
    if chosen is None:
        raise RuntimeError("no empty logical Redis database (1..15) on the shared server")
    try:
        yield f"redis://{PG_HOST}:{port}/{chosen}"
    finally:
        keys = list(client.scan_iter(count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        client.close()


def production_env(
    home: Path,
    *,
    database: str,
    dagster_database: str,
    redis_url: str,
    webhook_url: str,
    webhook_secret: str,
    pg_port: int = PG_PORT,
) -> dict[str, str]:
    """Every variable the production profile reads, pointing at the test's servers."""
    return {
        "JOURNEY_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "JOURNEY_PROFILE": "production",
        "JOURNEY_PII_KEY": "production-test-key-" + "0" * 32,
        "JOURNEY_POSTGRES_DSN": dsn(database, pg_port),
        "JOURNEY_REDIS_URL": redis_url,
        "JOURNEY_PG_HOST": PG_HOST,
        "JOURNEY_PG_PORT": str(pg_port),
        "JOURNEY_PG_USER": PG_USER,
        "JOURNEY_PG_PASSWORD": "",
        "JOURNEY_DAGSTER_DB": dagster_database,
        "JOURNEY_CRM": "webhook",
        "JOURNEY_CRM_WEBHOOK_URL": webhook_url,
        "JOURNEY_CRM_WEBHOOK_SECRET": webhook_secret,
    }


# Variables a test must not inherit from the developer's shell or from earlier tests.
CLEARED = (
    "JOURNEY_MLFLOW_URI",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "JOURNEY_OUTBOX_URL",
    "JOURNEY_KAFKA_BOOTSTRAP",
    "JOURNEY_KAFKA_TOPIC",
    "JOURNEY_KAFKA_GROUP",
    "JOURNEY_DBT_TARGET",
    "JOURNEY_WAREHOUSE_PATH",
)


# --------------------------------------------------------------------------- private servers


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


class PrivatePostgres:
    """A throw-away PostgreSQL cluster in a temporary directory on a free port, trust auth.

    initdb refuses to run as root; as root the cluster belongs to the ``postgres`` system
    user. :meth:`stop` and :meth:`start` take only this cluster down and up."""

    def __init__(self) -> None:
        self.bin = postgres_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL server binaries not found in /usr/lib/postgresql")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="jp_private_pg_"))
        self.data = self.dir / "data"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            self._as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str, timeout: float = 60) -> None:
        subprocess.run(
            [*self._as_user, *args],
            check=True,
            capture_output=True,
            timeout=timeout,
            cwd=self.dir,
        )

    def init(self) -> PrivatePostgres:
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            PG_USER,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        return self

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.dir / "log"),
            "-w",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        with suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRedis:
    """A redis-server of our own on a free port, persisting to an append-only file so a
    restart brings its data back."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise RuntimeError("redis-server is not installed")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="jp_private_redis_"))
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not wait_for(lambda: service_up("127.0.0.1", self.port), 15):
            raise RuntimeError(f"private redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=15)
        self.process = None
        wait_for(lambda: not service_up("127.0.0.1", self.port), 10)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------- Kafka mock cluster


class MockKafka:
    """librdkafka's mock cluster, created through its C API so brokers can be taken down.

    ``bootstrap`` is its address list; :meth:`broker_down` / :meth:`broker_up` disconnect a
    broker and refuse new connections, then accept them again, keeping the log."""

    def __init__(self, brokers: int = 1) -> None:
        import confluent_kafka

        libs = Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs"
        candidates = sorted(libs.glob("librdkafka*.so*"))
        if not candidates:
            raise RuntimeError(f"librdkafka shared library not found in {libs}")
        lib = ctypes.CDLL(str(candidates[0]))
        lib.rd_kafka_conf_new.restype = ctypes.c_void_p
        lib.rd_kafka_new.restype = ctypes.c_void_p
        lib.rd_kafka_new.argtypes = [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_size_t,
        ]
        lib.rd_kafka_mock_cluster_new.restype = ctypes.c_void_p
        lib.rd_kafka_mock_cluster_new.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.rd_kafka_mock_cluster_bootstraps.restype = ctypes.c_char_p
        lib.rd_kafka_mock_cluster_bootstraps.argtypes = [ctypes.c_void_p]
        lib.rd_kafka_mock_broker_set_down.argtypes = [ctypes.c_void_p, ctypes.c_int32]
        lib.rd_kafka_mock_broker_set_up.argtypes = [ctypes.c_void_p, ctypes.c_int32]
        lib.rd_kafka_mock_topic_create.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_int,
        ]
        lib.rd_kafka_mock_cluster_destroy.argtypes = [ctypes.c_void_p]
        lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
        self._lib = lib
        errors = ctypes.create_string_buffer(512)
        self._handle = lib.rd_kafka_new(0, lib.rd_kafka_conf_new(), errors, 512)  # a producer
        if not self._handle:
            raise RuntimeError(f"rd_kafka_new failed: {errors.value.decode()}")
        self._cluster = lib.rd_kafka_mock_cluster_new(self._handle, brokers)
        if not self._cluster:
            raise RuntimeError("rd_kafka_mock_cluster_new failed")
        self.bootstrap = lib.rd_kafka_mock_cluster_bootstraps(self._cluster).decode()

    def create_topic(self, topic: str, partitions: int = 1) -> None:
        code = self._lib.rd_kafka_mock_topic_create(self._cluster, topic.encode(), partitions, 1)
        if code != 0:
            raise RuntimeError(f"mock topic {topic!r} not created (error {code})")

    def broker_down(self, broker_id: int = 1) -> None:
        self._lib.rd_kafka_mock_broker_set_down(self._cluster, broker_id)

    def broker_up(self, broker_id: int = 1) -> None:
        self._lib.rd_kafka_mock_broker_set_up(self._cluster, broker_id)

    def close(self) -> None:
        if self._cluster:
            self._lib.rd_kafka_mock_cluster_destroy(self._cluster)
            self._cluster = None
        if self._handle:
            self._lib.rd_kafka_destroy(self._handle)
            self._handle = None


# --------------------------------------------------------------------------- pytest helpers


def requires(*services: str):
    """Skip markers for the shared servers named ('postgres', 'redis'), with the reason."""
    import pytest

    where = {"postgres": (PG_HOST, PG_PORT, "PostgreSQL"), "redis": (PG_HOST, REDIS_PORT, "Redis")}
    marks = []
    for service in services:
        host, port, name = where[service]
        marks.append(getattr(pytest.mark, service))
        marks.append(
            pytest.mark.skipif(
                not service_up(host, port),
                reason=f"{name} is not running on {host}:{port} (the production profile needs it)",
            )
        )
    return marks


def setenv_all(monkeypatch, env: dict[str, str], cleared=CLEARED) -> None:
    """Set ``env`` and unset ``cleared`` so that undo restores the caller's environment, even
    for variables a library sets later (MLflow exports MLFLOW_TRACKING_URI)."""
    for name in cleared:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
