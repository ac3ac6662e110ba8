"""The closed loop on the production profile, end to end, against real servers.

Two simulated days of a small world (the second one scored by two overlapping runs): events
are published to Kafka (librdkafka's mock cluster) and only reach the warehouse through the
topic; dbt builds the features, Feast serves
them from Redis with its registry on PostgreSQL; the champion comes from the MLflow registry
on PostgreSQL; Dagster keeps its runs on PostgreSQL; offers go through the PostgreSQL outbox
to a webhook CRM on loopback. Each run uses its own databases, Redis logical database, topic
and consumer group, all removed afterwards. Skips with the reason when a server is absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from production_servers import (
    MockKafka,
    empty_redis_database,
    postgres_databases,
    production_env,
    requires,
    setenv_all,
)

pytestmark = [*requires("postgres", "redis"), pytest.mark.kafka]

CONTACTS = 300
DAYS = 1  # the full loop; the last test adds a second day
SEED = 11
SECRET = "production-loop-webhook-secret"


@dataclass
class ProductionWorld:
    settings: Any
    instance: Any
    receiver: Any
    database: str
    dagster_database: str
    redis_url: str
    champion: str
    producer: Any = None
    topic: str = ""
    published: list[int] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)
    days: list[str] = field(default_factory=list)


def publish_landing_files(settings, producer, topic: str, sent_dir: Path) -> int:
    """Publish every landing line to ``topic`` (keyed by contact) and move the files away,
    so the warehouse can only get these events through Kafka. Returns the lines published."""
    from journey_pipeline.observe.landing import landing_files

    sent_dir.mkdir(parents=True, exist_ok=True)
    published = 0
    for path in landing_files(settings.landing_dir):
        for line in path.read_bytes().splitlines():
            if not line.strip():
                continue
            try:
                key = json.loads(line).get("contact_id")
            except ValueError:
                key = None
            producer.produce(topic, key=key.encode() if key else None, value=line)
            producer.poll(0)
            published += 1
        path.rename(sent_dir / path.name)
    assert producer.flush(30) == 0, "the mock cluster did not take every event"
    return published


def register_champion(settings) -> str:
    """Train a policy on synthetic rows, log it to the MLflow registry of the settings and
    promote it: the loop must serve it from there."""
    from journey_pipeline.decide import registry
    from journey_pipeline.decide.reward_model import TrainingConfig, train_reward_models
    from journey_pipeline.decide.synthetic import synthetic_training_frame

    result = train_reward_models(synthetic_training_frame(1500, seed=SEED), TrainingConfig(seed=0))
    run = registry.log_training_run(result, settings, run_name="production-e2e")
    registry.promote(
        run.version, who="test", why="champion of the production test", settings=settings
    )
    return run.version


def metadata(result, asset: str) -> dict[str, Any]:
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key.path[-1] == asset:
            return {k: v.value for k, v in materialization.metadata.items()}
    return {}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from confluent_kafka import Producer
    from webhook_receiver import WebhookReceiver

    from journey_pipeline.definitions import defs
    from journey_pipeline.instance import dagster_instance
    from journey_pipeline.settings import load_settings
    from journey_pipeline.sim.run import simulate

    home = tmp_path_factory.mktemp("production_loop") / "home"
    run_tag = uuid.uuid4().hex[:10]
    with ExitStack() as stack:
        database, dagster_database = stack.enter_context(postgres_databases("", "_dagster"))
        redis_url = stack.enter_context(empty_redis_database())
        receiver = stack.enter_context(WebhookReceiver(SECRET))
        kafka = MockKafka()
        stack.callback(kafka.close)
        topic = f"crm.contact_events.{run_tag}"
        kafka.create_topic(topic, partitions=2)
        env = production_env(
            home,
            database=database,
            dagster_database=dagster_database,
            redis_url=redis_url,
            webhook_url=receiver.url,
            webhook_secret=SECRET,
        )
        env.update(
            JOURNEY_KAFKA_BOOTSTRAP=kafka.bootstrap,
            JOURNEY_KAFKA_TOPIC=topic,
            JOURNEY_KAFKA_GROUP=f"journey-e2e-{run_tag}",
        )
        monkeypatch = pytest.MonkeyPatch()
        stack.callback(monkeypatch.undo)
        setenv_all(monkeypatch, env)
        settings = load_settings()
        settings.ensure_dirs()
        instance = dagster_instance(settings)
        stack.callback(instance.dispose)
        champion = register_champion(settings)
        producer = Producer({"bootstrap.servers": kafka.bootstrap})
        daily = defs.get_job_def("daily_loop_job")
        built = ProductionWorld(
            settings, instance, receiver, database, dagster_database, redis_url, champion
        )
        for _ in range(DAYS):
            sim = simulate(settings, days=1, contacts=CONTACTS, seed=SEED)
            built.published.append(
                publish_landing_files(settings, producer, topic, home / "published")
            )
            day = str(sim["last_date"])
            built.days.append(day)
            built.results.append(daily.execute_in_process(instance=instance, partition_key=day))
        built.producer, built.topic = producer, topic
        del producer
        yield built
        built.producer = None  # before the mock cluster goes: it would keep reconnecting


def test_every_day_ran_on_events_that_came_only_through_kafka(world):
    from journey_pipeline.warehouse import warehouse

    assert all(result.success for result in world.results)
    accepted = 0
    for result, published in zip(world.results, world.published, strict=True):
        ingest = metadata(result, "raw_events")
        assert ingest["files"] == []  # no landing file: the topic is the only source
        assert ingest["kafka_received"] == published > 0
        assert ingest["kafka_accepted"] + ingest["dead_lettered"] == published
        accepted += ingest["kafka_accepted"]
    with warehouse(world.settings.warehouse_path, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM raw.events").fetchone()[0] == accepted


def test_dagster_runs_and_events_are_stored_in_postgres(world):
    import psycopg2

    with (
        psycopg2.connect(host="127.0.0.1", user="postgres", dbname=world.dagster_database) as con,
        con.cursor() as cur,
    ):
        cur.execute("SELECT run_id, status FROM runs WHERE pipeline_name = 'daily_loop_job'")
        runs = dict(cur.fetchall())
        cur.execute("SELECT count(*) FROM event_logs")
        events = cur.fetchone()[0]
    assert {r.run_id: "SUCCESS" for r in world.results}.items() <= runs.items()
    assert events > 0
    stored = world.instance.get_runs()
    assert {r.run_id for r in world.results} <= {r.run_id for r in stored}


def test_features_were_served_from_redis_with_the_registry_on_postgres(world):
    import psycopg2
    import redis

    for result in world.results:
        parity = [
            e.passed
            for e in result.get_asset_check_evaluations()
            if e.check_name == "online_features_parity"
        ]
        assert parity == [True]
        assert metadata(result, "online_features")["contacts"] >= CONTACTS
    client = redis.Redis.from_url(world.redis_url)
    assert client.dbsize() >= CONTACTS  # one hash per contact
    client.close()
    with (
        psycopg2.connect(host="127.0.0.1", user="postgres", dbname=world.database) as con,
        con.cursor() as cur,
    ):
        cur.execute("SELECT feature_view_name FROM feature_views")
        assert ("contact_features",) in cur.fetchall()


def test_decisions_were_taken_by_the_champion_of_the_postgres_registry(world):
    import psycopg2

    from journey_pipeline.warehouse import warehouse

    for result in world.results:
        assert str(metadata(result, "decisions")["champion_version"]) == world.champion
    with warehouse(world.settings.warehouse_path, read_only=True) as con:
        versions = con.execute(
            "SELECT DISTINCT model_version FROM decide.decision_log WHERE mode = 'live'"
        ).fetchall()
    assert versions == [(world.champion,)]
    with (
        psycopg2.connect(host="127.0.0.1", user="postgres", dbname=world.database) as con,
        con.cursor() as cur,
    ):
        cur.execute("SELECT alias, version FROM registered_model_aliases")
        assert ("champion", int(world.champion)) in cur.fetchall()


def test_each_live_offer_reached_the_webhook_crm_exactly_once(world):
    import psycopg2

    from journey_pipeline.warehouse import warehouse

    with warehouse(world.settings.warehouse_path, read_only=True) as con:
        offers = {
            r[0]
            for r in con.execute(
                "SELECT decision_id FROM decide.decision_log "
                "WHERE mode = 'live' AND action <> 'no_offer'"
            ).fetchall()
        }
    assert offers
    assert set(world.receiver.tasks) == offers
    delivered = [d["key"] for d in world.receiver.deliveries]
    assert len(delivered) == len(set(delivered)) == len(offers)
    assert all(d["valid_signature"] for d in world.receiver.deliveries)
    confirmed = sum(metadata(r, "crm_writeback")["dispatch_confirmed"] for r in world.results)
    assert confirmed == len(offers)
    with (
        psycopg2.connect(host="127.0.0.1", user="postgres", dbname=world.database) as con,
        con.cursor() as cur,
    ):
        cur.execute("SELECT status, count(*) FROM crm_outbox GROUP BY 1")
        assert dict(cur.fetchall()) == {"confirmed": len(offers)}


def test_two_overlapping_scoring_and_writeback_runs_duplicate_nothing(world):
    """A third day is ingested and its features served; then two runs of the scoring and
    write-back assets for that day start at once, each in its own process, as two launched
    runs would: the warehouse pool serialises the scoring, the decision log keeps the first
    decision per id and the outbox's leases let only one dispatcher send each offer."""
    import dagster as dg
    import psycopg2

    from journey_pipeline.definitions import defs
    from journey_pipeline.sim.run import simulate
    from journey_pipeline.warehouse import warehouse

    settings = world.settings
    sim = simulate(settings, days=1, contacts=CONTACTS, seed=SEED)
    day = str(sim["last_date"])
    published = publish_landing_files(
        settings, world.producer, world.topic, settings.home / "published"
    )
    upstream = dg.AssetSelection.groups("observe", "features").resolve(defs.resolve_asset_graph())
    prepared = defs.get_job_def("daily_loop_job").execute_in_process(
        instance=world.instance, partition_key=day, asset_selection=list(upstream)
    )
    assert prepared.success
    # The consumer group resumed after the first day's offsets: only the new day's events.
    assert metadata(prepared, "raw_events")["kafka_received"] == published
    with warehouse(settings.warehouse_path, read_only=True) as con:
        before = con.execute("SELECT count(*) FROM decide.decision_log").fetchone()[0]
    tasks_before = set(world.receiver.tasks)

    command = [
        str(Path(sys.executable).with_name("dagster")),
        "asset",
        "materialize",
        "-m",
        "journey_pipeline.definitions",
        "--select",
        "decisions,crm_writeback",
        "--partition",
        day,
    ]
    repo = Path(__file__).resolve().parents[2]
    runs = [
        subprocess.Popen(
            command,
            cwd=repo,
            env=dict(os.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=600)[0].decode(errors="replace") for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output[-3000:]

    with warehouse(settings.warehouse_path, read_only=True) as con:
        total, distinct = con.execute(
            "SELECT count(*), count(DISTINCT decision_id) FROM decide.decision_log"
        ).fetchone()
        offers = {
            r[0]
            for r in con.execute(
                "SELECT decision_id FROM decide.decision_log WHERE mode = 'live' "
                "AND action <> 'no_offer' AND decided_at >= ?::DATE + 1",
                [day],
            ).fetchall()
        }
        triggers = con.execute(
            "SELECT count(*) FROM decide.decision_log WHERE decided_at >= ?::DATE + 1", [day]
        ).fetchone()[0]
    assert total == distinct > before
    assert triggers == total - before > 0
    assert offers and set(world.receiver.tasks) - tasks_before == offers
    sent = [d["key"] for d in world.receiver.deliveries]
    assert len(sent) == len(set(sent))  # no offer was even sent twice
    with (
        psycopg2.connect(host="127.0.0.1", user="postgres", dbname=world.dagster_database) as con,
        con.cursor() as cur,
    ):
        cur.execute(
            "SELECT status FROM runs WHERE run_body::jsonb -> 'tags' ->> 'dagster/partition' = %s "
            "AND pipeline_name = '__ASSET_JOB'",
            [day],
        )
        assert sorted(r[0] for r in cur.fetchall()) == ["SUCCESS", "SUCCESS"]
