"""`feast apply` from the command line registers the same objects as the code does."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from journey_pipeline.features import feature_store as fs
from journey_pipeline.features.contract import FEATURES

REPO_ROOT = Path(__file__).resolve().parents[2]
FEAST = str(Path(sys.executable).parent / "feast")


def _feast(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [FEAST, "-c", "feature_repo", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_feast_cli_apply_registers_the_definitions_under_journey_home(settings):
    done = _feast(["apply"], {"JOURNEY_HOME": str(settings.home)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "contact_features" in done.stdout
    assert (settings.feast_dir / "registry.db").exists()
    assert (settings.feast_dir / "online.db").exists()

    # The programmatic store reads what the CLI registered: same home, same objects.
    store = fs.build_store(settings)
    view = store.get_feature_view(fs.FEATURE_VIEW)
    assert [f.name for f in view.features] == list(FEATURES)
    assert view.batch_source.path == str(fs.export_path(settings))
    expected = fs.feature_definitions(fs.export_path(settings)).feature_view
    assert view.to_proto().spec.features == expected.to_proto().spec.features
    service = store.get_feature_service(fs.FEATURE_SERVICE)
    assert [p.name for p in service.feature_view_projections] == [fs.FEATURE_VIEW]

    # Applying the code's definitions on top changes nothing the CLI registered.
    fs.apply_definitions(store, fs.export_path(settings))
    before, after = view.to_proto().spec, store.get_feature_view(fs.FEATURE_VIEW).to_proto().spec
    for part in ("features", "entities", "ttl", "entity_columns", "online"):
        assert getattr(after, part) == getattr(before, part), part
    for part in ("name", "file_options", "timestamp_field", "created_timestamp_column"):
        assert getattr(after.batch_source, part) == getattr(before.batch_source, part), part


def _up(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.skipif(
    not (_up(5432) and _up(6379)), reason="PostgreSQL on :5432 or Redis on :6379 is down"
)
def test_feast_cli_apply_with_the_production_yaml(settings):
    import psycopg2

    dsn = "postgresql://postgres@127.0.0.1:5432/test"
    schema = f"feast_cli_{uuid.uuid4().hex[:10]}"
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
    try:
        done = _feast(
            ["-f", "feature_repo/feature_store.production.yaml", "apply"],
            {
                "JOURNEY_HOME": str(settings.home),
                "JOURNEY_FEAST_REGISTRY_URL": "postgresql+psycopg2://postgres@127.0.0.1:5432/"
                f"test?options=-csearch_path%3D{schema}",
                "JOURNEY_FEAST_REDIS": "127.0.0.1:6379,db=0",
            },
        )
        assert done.returncode == 0, done.stderr[-2000:]
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute(f"SELECT feature_view_name FROM {schema}.feature_views")
            assert [row[0] for row in cur.fetchall()] == [fs.FEATURE_VIEW]
    finally:
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute(f"DROP SCHEMA {schema} CASCADE")
