"""The Kafka source against librdkafka's built-in mock cluster: everything accounted for,
offsets committed only after the warehouse write, crash and restart lose and duplicate nothing."""

from __future__ import annotations

import random
import re

import pytest
from confluent_kafka import Consumer, Producer
from observe_helpers import line, make_event, query

from journey_pipeline.observe.kafka_source import consume, consumer_config

pytestmark = pytest.mark.kafka

TOPIC = "crm.contact_events"


@pytest.fixture
def broker():
    """A one-broker mock cluster; yields (producer, bootstrap address)."""
    producer = Producer({"test.mock.num.brokers": 1})
    brokers = producer.list_topics(timeout=10).brokers
    bootstrap = ",".join(f"{b.host}:{b.port}" for b in brokers.values())
    yield producer, bootstrap
    producer.flush(10)


def produce_corpus(
    producer: Producer, n_valid: int, n_malformed: int, n_duplicates: int, seed: int = 3
):
    """Publish a shuffled stream; return the ids of the valid events."""
    rng = random.Random(seed)
    valid = [
        make_event(rng.choice(["product.viewed", "contact.updated", "payment.succeeded"]))
        for _ in range(n_valid)
    ]
    stream = [line(e) for e in valid]
    stream += [b'{"broken": ' + str(i).encode() for i in range(n_malformed)]
    stream += [line(rng.choice(valid)) for _ in range(n_duplicates)]
    rng.shuffle(stream)
    for value in stream:
        producer.produce(TOPIC, value=value)
        producer.poll(0)
    producer.produce(TOPIC, value=None)  # a tombstone: not a record
    producer.flush(30)
    return {e["event_id"] for e in valid}, len(stream) + 1


def test_every_message_is_accounted_for(settings, broker):
    producer, bootstrap = broker
    ids, total = produce_corpus(producer, 9_800, 100, 100)
    # Stops at the last message (the tombstone); the idle timeout is only a safety net.
    summary = consume(
        settings,
        bootstrap,
        max_messages=total,
        idle_timeout_s=20,
        poll_batch=2_500,
    )
    assert (summary.received, summary.accepted, summary.duplicates, summary.dead_lettered) == (
        10_000,
        9_800,
        100,
        100,
    )
    assert summary.reconciles()
    stored = {r[0] for r in query(settings, "SELECT event_id FROM raw.events")}
    assert stored == ids
    positions = query(settings, "SELECT position, source FROM ops.dead_letter")
    assert len(positions) == 100
    assert all(re.fullmatch(rf"{TOPIC}/\d+/\d+", p) and s == "kafka" for p, s in positions)


class CrashAfterWrite(Consumer):
    """A consumer whose process 'dies' between a warehouse commit and its offset commit."""

    def __init__(self, config, commits_before_crash: int):
        super().__init__(config)
        self.commits_left = commits_before_crash

    def commit(self, *args, **kwargs):
        if self.commits_left == 0:
            raise SystemExit("simulated crash between write and offset commit")
        self.commits_left -= 1
        return super().commit(*args, **kwargs)


def test_a_consumer_killed_mid_stream_and_restarted_loses_and_duplicates_nothing(settings, broker):
    producer, bootstrap = broker
    ids, total = produce_corpus(producer, 4_900, 50, 50, seed=5)
    # First run stops cleanly after some messages (offsets committed for them).
    first = consume(
        settings,
        bootstrap,
        max_messages=1_200,
        idle_timeout_s=20,
        poll_batch=500,
    )
    # max_messages counts the tombstone too, and the mock topic has 4 partitions, so it is
    # among the first 1,200 messages when its partition is read early.
    assert first.received in (1_199, 1_200)
    # Second run writes two more polls but dies before committing the second one's offsets.
    crashing = CrashAfterWrite(consumer_config(settings, bootstrap), commits_before_crash=1)
    with pytest.raises(SystemExit):
        consume(settings, idle_timeout_s=20, poll_batch=700, consumer=crashing)
    crashing.close()
    written_before_restart = query(settings, "SELECT count(*) FROM raw.events")[0][0]
    assert written_before_restart > 1_200
    # The restart re-reads the uncommitted poll; dedup absorbs what was already written.
    restarted = consume(settings, bootstrap, idle_timeout_s=5, poll_batch=1_000)
    # The poll written before the crash came again and was absorbed as duplicates.
    assert restarted.duplicates > 0
    assert restarted.reconciles()
    stored = query(settings, "SELECT event_id FROM raw.events")
    assert len(stored) == len({r[0] for r in stored}) == len(ids)
    assert {r[0] for r in stored} == ids
    # Every malformed message is on record exactly once, redelivery notwithstanding.
    assert query(settings, "SELECT count(*), count(DISTINCT position) FROM ops.dead_letter") == [
        (50, 50)
    ]
    # The committed offsets cover the whole topic (tombstone included).
    batches = query(settings, "SELECT sum(received) FROM ops.ingest_batches")[0][0]
    assert batches >= total - 1
