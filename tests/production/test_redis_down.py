"""Fault: Redis, the production online store, goes down under a running decision service.

A private redis-server on a free port (the shared one is never touched) holds the online
features; the Feast registry is on the shared PostgreSQL, in a database of this test. While
Redis is down every decision is the documented default action (``no_offer``) with the reason
``feature_store_unavailable: <error>``, no exception escapes; when Redis returns, decisions use
the features again without restarting the service.
"""

from __future__ import annotations

import pytest
from production_servers import (
    PrivateRedis,
    postgres_databases,
    production_env,
    requires,
    setenv_all,
)

pytestmark = requires("postgres")


@pytest.fixture
def private_redis():
    try:
        server = PrivateRedis()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    server.start()
    yield server
    server.destroy()


def test_decisions_fall_back_while_redis_is_down_and_recover_when_it_returns(
    tmp_path, monkeypatch, private_redis
):
    from journey_pipeline.actions import DEFAULT_ACTION
    from journey_pipeline.serve.core import DecisionService, ServiceConfig
    from journey_pipeline.serve.quickstart import prepare_quickstart_home
    from journey_pipeline.settings import load_settings

    home = tmp_path / "home"
    with postgres_databases("") as (database,):
        env = production_env(
            home,
            database=database,
            dagster_database=database,
            redis_url=private_redis.url,
            webhook_url="",
            webhook_secret="",
        )
        env.update(JOURNEY_CRM="local", JOURNEY_MLFLOW_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
        setenv_all(monkeypatch, env)
        settings = load_settings()
        prepared = prepare_quickstart_home(settings, contacts=30, versions=1, training_rows=1000)
        contact = prepared.contact_ids[0]
        service = DecisionService(settings, ServiceConfig(mode="shadow")).start(background=False)
        try:
            assert service.ready
            before = service.decide(contact, trigger="before")
            assert before["fallback_reason"] is None
            assert before["model_version"] == prepared.champion

            private_redis.stop()
            during = [service.decide(contact, trigger=f"during-{i}") for i in range(3)]
            for answer in during:
                assert answer["action"] == DEFAULT_ACTION
                assert answer["fallback_reason"].startswith("feature_store_unavailable: ")
                assert "ConnectionError" in answer["fallback_reason"]
            # Every fallback answer is counted for /metrics.
            assert service.metrics.fallbacks.labels("feature_store_unavailable")._value.get() >= 3

            private_redis.start()  # the append-only file brings the features back
            after = service.decide(contact, trigger="after")
            assert after["fallback_reason"] is None
            assert after["model_version"] == prepared.champion
            # The answer repeated for a decision taken while Redis was down is the first one.
            assert service.decide(contact, trigger="during-0") == during[0]
        finally:
            service.close()
