"""The streaming path over the Kafka protocol (librdkafka's mock cluster): trigger events become
CRM tasks exactly once, even when the consumer dies between the CRM write and the commit."""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from datetime import UTC, datetime, timedelta

import duckdb
import pytest
from confluent_kafka import Consumer, Producer

from journey_pipeline.observe.schema import validate_record
from journey_pipeline.serve.core import DecisionService, ServiceConfig
from journey_pipeline.serve.stream import (
    TRIGGER_OPPORTUNITY,
    StreamDecider,
    TriggerDetector,
    _poll_batch,
    run_stream,
    stream_consumer_config,
)

pytestmark = pytest.mark.kafka
GROUP = "journey-decide-test"
# The mock cluster hands a departed member's partitions over only after its session times
# out: keep that short so the restarted consumers get them in seconds.
FAST_REJOIN = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


def _event(kind: str, contact: str, at: datetime, **payload) -> dict:
    return {
        "event_id": str(uuid.uuid4()),
        "timestamp": at.isoformat().replace("+00:00", "Z"),
        "type": kind,
        "source": "test",
        "payload": {"contact_id": contact, **payload},
    }


def _world(contact_ids: list[str], n: int = 1000) -> tuple[list[bytes], set[str]]:
    """``n`` records (a few unreadable) and the event ids that must trigger a decision."""
    start = datetime(2026, 3, 1, tzinfo=UTC)
    records, triggers, became_opportunity = [], set(), set()
    for i in range(n):
        contact = contact_ids[(i * 7) % len(contact_ids)]
        at = start + timedelta(seconds=i)
        if i % 97 == 0:
            records.append(b"{not json")
            continue
        if i % 4 == 0:
            event = _event("cart.abandoned", contact, at, product_id=f"P-{i % 13}")
            triggers.add(event["event_id"])
        elif i % 9 == 1 and contact not in became_opportunity:
            # One stage change per contact: which repeats trigger depends on what a consumer
            # remembers, and a restarted one remembers nothing (test_trigger_detection_rules).
            event = _event("contact.updated", contact, at, lifecycle_stage="opportunity")
            triggers.add(event["event_id"])
            became_opportunity.add(contact)
        else:
            event = _event("product.viewed", contact, at, product_id=f"P-{i % 13}")
        records.append(json.dumps(event).encode())
    return records, triggers


@pytest.fixture
def kafka(served_home):
    producer = Producer({"test.mock.num.brokers": 1})
    bootstrap = ",".join(
        f"{b.host}:{b.port}" for b in producer.list_topics(timeout=10).brokers.values()
    )
    # The mock cluster creates the topic on first produce (several partitions).
    yield producer, bootstrap, served_home.settings.kafka_topic
    producer.flush(10)


def _produce(producer: Producer, topic: str, records: list[bytes]) -> None:
    for record in records:
        # Keyed by contact, as CDC topics are, so one contact's events keep their order.
        key = json.loads(record)["payload"]["contact_id"] if record.startswith(b'{"') else "bad"
        producer.produce(topic, value=record, key=key.encode())
    assert producer.flush(10) == 0


def test_stream_writes_each_triggered_offer_to_the_crm_exactly_once(served_home, kafka):
    producer, bootstrap, topic = kafka
    settings = served_home.settings
    records, expected_triggers = _world(served_home.contact_ids)
    _produce(producer, topic, records)

    first = run_stream(
        settings,
        bootstrap,
        max_events=350,
        group_id=GROUP,
        poll_batch=100,
        extra_config=FAST_REJOIN,
    )
    assert first["events"] == 350 and first["batches"] >= 4

    # A consumer that decides, flushes and writes the CRM, then dies before committing.
    service = DecisionService(settings, ServiceConfig()).start(background=False)
    consumer = Consumer({**stream_consumer_config(settings, bootstrap, GROUP), **FAST_REJOIN})
    consumer.subscribe([topic])
    crashed = StreamDecider(service)
    for _ in range(3):
        messages = _poll_batch(consumer, 100, 15.0, threading.Event())
        crashed.process(messages)
    assert crashed.summary.crm_confirmed > 0
    consumer.close()  # no commit: these events come again
    service.close()

    rest = run_stream(
        settings,
        bootstrap,
        idle_timeout_s=10.0,
        group_id=GROUP,
        poll_batch=100,
        extra_config=FAST_REJOIN,
    )
    assert first["events"] + rest["events"] >= len(records)
    assert first["rejected"] + rest["rejected"] == sum(1 for r in records if r == b"{not json")

    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        logged = con.execute(
            "SELECT decision_id, trigger_event_id, action, mode FROM decide.decision_log"
        ).fetchall()
    decided_triggers = [row[1] for row in logged]
    assert sorted(decided_triggers) == sorted(expected_triggers)  # each trigger decided once
    live_offers = {row[0] for row in logged if row[2] != "no_offer" and row[3] == "live"}
    assert live_offers
    with sqlite3.connect(settings.crm_path) as con:
        tasks = con.execute("SELECT decision_id, body FROM tasks").fetchall()
    task_ids = [t[0] for t in tasks]
    assert len(task_ids) == len(set(task_ids))
    assert set(task_ids) == live_offers
    task_triggers = [json.loads(t[1])["trigger_event_id"] for t in tasks]
    assert len(task_triggers) == len(set(task_triggers))


def test_trigger_detection_rules():
    detector = TriggerDetector()
    at = datetime(2026, 3, 1, tzinfo=UTC)

    def kind(event: dict) -> str | None:
        raw = json.dumps(event).encode()
        return detector.trigger_type(validate_record(raw), raw)

    assert kind(_event("cart.abandoned", "C-1", at)) == "cart.abandoned"
    assert kind(_event("product.viewed", "C-1", at, product_id="P")) is None
    assert kind(_event("contact.updated", "C-1", at, lifecycle_stage="lead")) is None
    assert kind(_event("contact.updated", "C-1", at, lifecycle_stage="opportunity")) == (
        TRIGGER_OPPORTUNITY
    )
    # Still an opportunity: no new trigger.
    assert kind(_event("contact.updated", "C-1", at, lifecycle_stage="opportunity")) is None
    assert kind(_event("contact.deleted", "C-1", at)) is None
    assert "C-1" in detector.deleted
    # A Debezium change says what the stage was before.
    envelope = {
        "op": "u",
        "ts_ms": 1_772_000_000_000,
        "source": {"lsn": 1},
        "before": {"contact_id": "C-2", "lifecycle_stage": "opportunity"},
        "after": {"contact_id": "C-2", "lifecycle_stage": "opportunity"},
    }
    raw = json.dumps(envelope).encode()
    assert detector.trigger_type(validate_record(raw), raw) is None
    envelope["before"]["lifecycle_stage"] = "sql"
    envelope["source"]["lsn"] = 2
    raw = json.dumps(envelope).encode()
    assert detector.trigger_type(validate_record(raw), raw) == TRIGGER_OPPORTUNITY
