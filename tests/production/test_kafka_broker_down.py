"""Fault: the Kafka broker goes away in the middle of a stream and comes back.

librdkafka's mock cluster is driven through its C API so the broker can really be taken
down (connections dropped, new ones refused) and brought back with its log intact. The
consumer keeps going once the broker returns, resuming from the committed offset: every
event is in the warehouse exactly once, and the offsets committed to the group cover the
whole topic. (tests/observe/test_observe_kafka.py covers a consumer that crashes between
the warehouse write and the offset commit and is restarted.)
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from production_servers import MockKafka

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "observe"))
from observe_helpers import line, make_event, query  # noqa: E402

from journey_pipeline.observe.kafka_source import consume, consumer_config  # noqa: E402

pytestmark = pytest.mark.kafka

TOPIC = "crm.contact_events"
EVENTS = 3_000


@pytest.fixture
def cluster():
    kafka = MockKafka()
    kafka.create_topic(TOPIC, partitions=2)
    yield kafka
    kafka.close()


class BrokerVanishes(Consumer):
    """Takes the broker down right after the ``after``-th offset commit and brings it back
    ``outage_s`` seconds later."""

    def __init__(self, config, kafka: MockKafka, after: int, outage_s: float):
        super().__init__(config)
        self.kafka, self.after, self.outage_s = kafka, after, outage_s
        self.commits = 0
        self.outages = 0
        self.fetched_before_outage = 0
        self.fetched = 0

    def consume(self, *args, **kwargs):
        messages = super().consume(*args, **kwargs)
        self.fetched += sum(1 for m in messages if m.error() is None)
        return messages

    def commit(self, *args, **kwargs):
        result = super().commit(*args, **kwargs)
        self.commits += 1
        if self.commits == self.after:
            self.outages += 1
            self.fetched_before_outage = self.fetched
            self.kafka.broker_down()
            threading.Timer(self.outage_s, self.kafka.broker_up).start()
        return result


def test_the_consumer_rides_out_a_broker_outage_and_loses_or_repeats_nothing(settings, cluster):
    producer = Producer({"bootstrap.servers": cluster.bootstrap})
    events = [make_event("product.viewed") for _ in range(EVENTS)]
    for i, event in enumerate(events):
        event["payload"]["contact_id"] = f"C-{i % 97}"
    for event in events:
        producer.produce(TOPIC, key=event["payload"]["contact_id"].encode(), value=line(event))
        producer.poll(0)
    assert producer.flush(30) == 0
    del producer

    config = consumer_config(settings, cluster.bootstrap)
    # Small fetches, so most of the topic is still on the broker when it goes away.
    small_fetches = {
        "queued.min.messages": 50,
        "fetch.max.bytes": 32_768,
        "max.partition.fetch.bytes": 16_384,
        "message.max.bytes": 32_768,
    }
    consumer = BrokerVanishes({**config, **small_fetches}, cluster, after=2, outage_s=3.0)
    try:
        summary = consume(settings, idle_timeout_s=15, poll_batch=400, consumer=consumer)
    finally:
        consumer.close()
    assert consumer.outages == 1
    assert consumer.fetched_before_outage < EVENTS / 2
    assert consumer.commits > 2  # it went on committing after the broker came back
    assert summary.received == summary.accepted == EVENTS
    assert summary.duplicates == summary.dead_lettered == 0
    stored = [r[0] for r in query(settings, "SELECT event_id FROM raw.events")]
    assert len(stored) == len(set(stored)) == EVENTS
    assert set(stored) == {e["event_id"] for e in events}

    # The group's committed offsets now cover the whole topic: a new consumer gets nothing.
    probe = Consumer(config)
    try:
        committed = probe.committed([TopicPartition(TOPIC, p) for p in (0, 1)], timeout=10)
        ends = [probe.get_watermark_offsets(tp, timeout=10)[1] for tp in committed]
        assert [tp.offset for tp in committed] == ends
    finally:
        probe.close()
    again = consume(settings, cluster.bootstrap, idle_timeout_s=2)
    assert again.received == 0
