"""The Kafka source: CRM change events from a topic into the warehouse, at least once.

Messages are polled in batches and go through the same pipeline as files
(:class:`~journey_pipeline.observe.ingest.IngestBatch`). Offsets are committed to Kafka only
after the DuckDB transaction holding those messages has committed, so a crash anywhere loses
nothing: the uncommitted messages are delivered again and deduplication by ``event_id``
absorbs the ones already written. Tombstones (messages without a value, which Debezium emits
after a delete) carry no record: they are skipped, not counted, and their offsets committed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from journey_pipeline.observe.ingest import (
    IngestBatch,
    IngestSummary,
    RawRecord,
    ingest_session,
)
from journey_pipeline.settings import Settings

KAFKA_TRANSPORT = "kafka"


def consumer_config(settings: Settings, bootstrap: str) -> dict[str, Any]:
    """The consumer settings: manual commits, start from the earliest uncommitted message."""
    return {
        "bootstrap.servers": bootstrap,
        "group.id": settings.kafka_group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
    }


def message_position(message: Message) -> str:
    """``topic/partition/offset`` of a message, the dead-letter position format."""
    return f"{message.topic()}/{message.partition()}/{message.offset()}"


def _next_offsets(messages: list[Message]) -> list[TopicPartition]:
    """Per partition, the offset to commit after ``messages``: the highest one plus one."""
    highest: dict[tuple[str, int], int] = {}
    for message in messages:
        key = (message.topic(), message.partition())
        highest[key] = max(highest.get(key, -1), message.offset())
    return [TopicPartition(topic, part, offset + 1) for (topic, part), offset in highest.items()]


def consume(
    settings: Settings,
    bootstrap: str | None = None,
    max_messages: int | None = None,
    idle_timeout_s: float = 5.0,
    *,
    con_or_path: duckdb.DuckDBPyConnection | str | Path | None = None,
    topic: str | None = None,
    poll_batch: int = 10_000,
    consumer: Consumer | None = None,
    extra_config: Mapping[str, Any] | None = None,
    join_timeout_s: float = 30.0,
) -> IngestSummary:
    """Consume ``settings.kafka_topic`` into the warehouse as one batch; return its summary.

    Stops after ``max_messages`` messages (tombstones included) or when no message arrived for
    ``idle_timeout_s`` seconds once partitions are assigned (``join_timeout_s`` before).
    ``bootstrap`` defaults to ``settings.kafka_bootstrap_servers``.
    Each poll of up to ``poll_batch`` messages is one DuckDB transaction followed by a
    synchronous offset commit. ``consumer`` may be given ready-made (it must have manual
    commits); it is then assigned the topic's partitions but not closed.
    """
    bootstrap = bootstrap or settings.kafka_bootstrap_servers
    if consumer is None and not bootstrap:
        raise ValueError(
            "no Kafka bootstrap servers: pass bootstrap or set JOURNEY_KAFKA_BOOTSTRAP"
        )
    topic = topic or settings.kafka_topic
    owned_consumer = consumer is None
    if consumer is None:
        consumer = Consumer({**consumer_config(settings, bootstrap), **(extra_config or {})})
    try:
        with ingest_session(con_or_path, settings) as con:
            _assign_all_partitions(consumer, topic, join_timeout_s)
            batch = IngestBatch(con, settings, KAFKA_TRANSPORT, f"topic {topic}")
            seen = 0
            while max_messages is None or seen < max_messages:
                wanted = (
                    poll_batch if max_messages is None else min(poll_batch, max_messages - seen)
                )
                messages = _poll(consumer, wanted, idle_timeout_s, join_timeout_s)
                if not messages:
                    break
                seen += len(messages)
                batch.add_records(
                    [
                        RawRecord(m.value(), KAFKA_TRANSPORT, message_position(m))
                        for m in messages
                        if m.value() is not None
                    ]
                )
                # Only now is the chunk durable in the warehouse: commit its offsets.
                consumer.commit(offsets=_next_offsets(messages), asynchronous=False)
            return batch.finish()
    finally:
        if owned_consumer:
            consumer.close()


def _assign_all_partitions(consumer: Consumer, topic: str, timeout_s: float) -> None:
    """Assign every partition of ``topic`` to this consumer, each resuming at the group's
    committed offset (or the earliest one for a new group).

    The warehouse has a single writer, so one consumer reads the whole topic: a static
    assignment avoids group rebalances (seconds each) while offsets still live in the group.
    """
    metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        error = metadata.error if metadata is not None else "unknown topic"
        raise KafkaException(f"topic {topic!r} is not available: {error}")
    partitions = [TopicPartition(topic, p) for p in sorted(metadata.partitions)]
    committed = consumer.committed(partitions, timeout=timeout_s)
    consumer.assign(committed)


def consume_messages(consumer: Consumer, wanted: int, timeout_s: float) -> list[Message]:
    """One ``consume`` call of up to ``wanted`` messages: partition-end notices are dropped,
    any other error raises :class:`KafkaException`. Shared with the real-time stream."""
    good: list[Message] = []
    for message in consumer.consume(num_messages=wanted, timeout=timeout_s):
        error = message.error()
        if error is None:
            good.append(message)
        elif error.code() != KafkaError._PARTITION_EOF:
            raise KafkaException(error)
    return good


def _poll(
    consumer: Consumer, wanted: int, idle_timeout_s: float, join_timeout_s: float
) -> list[Message]:
    """Up to ``wanted`` messages: whatever arrives within short polls, giving up once nothing
    has come for ``idle_timeout_s`` after partitions are assigned (before that, the wait is
    ``join_timeout_s``, so a slow start is not mistaken for an empty topic). Partition-end
    notices are skipped; other errors raise.
    """
    started = time.monotonic()
    assigned_at: float | None = None
    while True:
        now = time.monotonic()
        if assigned_at is None and consumer.assignment():
            assigned_at = now
        if assigned_at is not None:
            left = idle_timeout_s - (now - assigned_at)
        else:
            left = max(idle_timeout_s, join_timeout_s) - (now - started)
        if left <= 0:
            return []
        good = consume_messages(consumer, wanted, min(0.5, left))
        if good:
            return good
