"""Fault: PostgreSQL restarts in the middle of a write-back run on the production profile.

A private PostgreSQL cluster (initdb + pg_ctl in a temporary directory, on a free port; the
shared server is never touched) holds the Dagster instance and the CRM outbox. While the
webhook CRM is answering one of the run's decisions, the cluster goes down and comes back.
The run fails cleanly (its failure recorded in the Dagster instance), a re-run succeeds, and
every decision is one CRM task: the one in flight is re-sent with the same idempotency key.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime

import pandas as pd
import pytest
from production_servers import PrivatePostgres, dsn, production_env, setenv_all

pytestmark = pytest.mark.postgres

SECRET = "postgres-restart-webhook-secret"
DECISIONS = 30
PARTITION = "2026-03-01"  # decisions taken at its close, 2026-03-02 00:00


@pytest.fixture
def private_postgres():
    try:
        server = PrivatePostgres().init()
        server.start()
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"cannot start a private PostgreSQL cluster: {exc}")
    yield server
    server.destroy()


def live_offers(n: int) -> pd.DataFrame:
    decided = datetime(2026, 3, 2, 0, 0)
    return pd.DataFrame(
        {
            "decision_id": [f"pg-restart-{i:03d}" for i in range(n)],
            "contact_id": [f"C-{i:05d}" for i in range(n)],
            "decided_at": [decided] * n,
            "decision_date": [decided.date()] * n,
            "trigger_event_id": [f"evt-{i}" for i in range(n)],
            "trigger_type": ["cart.abandoned"] * n,
            "policy_version": ["p1"] * n,
            "model_version": ["1"] * n,
            "mode": ["live"] * n,
            "action": ["offer_a" if i % 2 else "offer_b" for i in range(n)],
            "propensity": [0.5] * n,
            "holdout": [False] * n,
            "expected_rewards": ['{"no_offer": 0.0, "offer_a": 1.0, "offer_b": 0.5}'] * n,
            "explanation": ["[]"] * n,
            "rules_applied": ["[]"] * n,
            "fallback_reason": [None] * n,
        }
    )


def test_a_postgres_restart_fails_the_run_cleanly_and_the_rerun_duplicates_nothing(
    tmp_path, monkeypatch, private_postgres
):
    import dagster as dg
    import psycopg2
    from webhook_receiver import WebhookReceiver

    from journey_pipeline.act.assets import crm_writeback
    from journey_pipeline.decide.log import append_decisions
    from journey_pipeline.instance import dagster_instance
    from journey_pipeline.resources import JourneyResource
    from journey_pipeline.settings import load_settings
    from journey_pipeline.warehouse import warehouse

    admin = psycopg2.connect(host="127.0.0.1", port=private_postgres.port, user="postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("CREATE DATABASE journey")
        cur.execute("CREATE DATABASE journey_dagster")
    admin.close()

    restarts: list[str] = []

    class RestartingReceiver(WebhookReceiver):
        """Takes the cluster down while answering the 10th request; it is back 1.5 s later."""

        def _handle(self, handler):
            if len(self.deliveries) == 9 and not restarts:
                restarts.append(handler.headers.get("Idempotency-Key"))
                private_postgres.stop("fast")
                threading.Timer(1.5, private_postgres.start).start()
            super()._handle(handler)

    with RestartingReceiver(SECRET) as receiver:
        env = production_env(
            tmp_path / "home",
            database="journey",
            dagster_database="journey_dagster",
            # Required by the profile; the write-back never reads features.
            redis_url="redis://127.0.0.1:6379/0",
            webhook_url=receiver.url,
            webhook_secret=SECRET,
            pg_port=private_postgres.port,
        )
        setenv_all(monkeypatch, env)
        settings = load_settings()
        settings.ensure_dirs()
        assert settings.postgres_dsn == dsn("journey", private_postgres.port)
        with warehouse(settings.warehouse_path) as con:
            assert append_decisions(con, live_offers(DECISIONS)) == DECISIONS
        instance = dagster_instance(settings)
        try:

            def run() -> dg.ExecuteInProcessResult:
                return dg.materialize(
                    [crm_writeback],
                    partition_key=PARTITION,
                    instance=instance,
                    resources={"journey": JourneyResource()},
                    raise_on_error=False,
                )

            failed = run()
            assert restarts, "the cluster was never taken down"
            assert not failed.success
            stored = instance.get_run_by_id(failed.run_id)
            assert stored.status == dg.DagsterRunStatus.FAILURE
            failure = failed.get_step_failure_events()[0].event_specific_data.error
            assert "OperationalError" in failure.to_string()

            rerun = run()
            assert rerun.success
            assert instance.get_run_by_id(rerun.run_id).status == dg.DagsterRunStatus.SUCCESS
        finally:
            instance.dispose()

    offers = set(live_offers(DECISIONS)["decision_id"])
    assert set(receiver.tasks) == offers  # one task per decision
    sends = Counter(d["key"] for d in receiver.deliveries)
    # Only the decision in flight when the database went down was sent twice, same key.
    assert {k: n for k, n in sends.items() if n > 1} == {restarts[0]: 2}
    con = psycopg2.connect(
        host="127.0.0.1", port=private_postgres.port, user="postgres", dbname="journey"
    )
    with con, con.cursor() as cur:
        cur.execute("SELECT status, count(*) FROM crm_outbox GROUP BY 1")
        assert dict(cur.fetchall()) == {"confirmed": DECISIONS}
    con.close()
