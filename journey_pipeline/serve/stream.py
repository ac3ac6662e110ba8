"""The streaming path: ``journey stream``, CRM change events from Kafka to CRM tasks.

A consumer of ``settings.kafka_topic`` in its own group (``JOURNEY_STREAM_GROUP``, default
``journey-decide``; the ingest consumer keeps ``settings.kafka_group_id``) reads events with
the canonical schema's own parser (:func:`validate_record`, Debezium envelopes included) and
decides, through the same :class:`DecisionService` as the HTTP API, on triggering events:

- ``cart.abandoned``;
- ``contact.created``/``contact.updated`` whose ``lifecycle_stage`` becomes ``opportunity``:
  the previous stage is the Debezium ``before`` row when there is one, else the last stage
  this consumer saw for the contact; a contact first seen as an opportunity triggers.

``contact.deleted`` stops decisions for the contact in this consumer at once (the policy's
erasure rule covers it durably once ingestion recorded the erasure).

Per poll: decide the batch's triggers, put the offers into the outbox, dispatch the outbox,
append the decisions to the log, and only then commit the offsets. A crash anywhere re-delivers
the uncommitted events, which are decided again with the same decision_id (contact, event
id, policy version), so the outbox and the CRM absorb the repeat: at-least-once
consumption, exactly-once effect on the CRM. Unreadable records are counted and logged and
their offsets committed (the ingest consumer dead-letters them).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import Consumer, Message, TopicPartition

from journey_pipeline.observe.kafka_source import consume_messages
from journey_pipeline.observe.schema import (
    DEBEZIUM_SOURCE,
    CanonicalEvent,
    RecordRejected,
    is_debezium,
    validate_record,
)
from journey_pipeline.serve.core import DecisionRequest, DecisionService, ServiceConfig
from journey_pipeline.settings import Settings

logger = logging.getLogger(__name__)

STREAM_GROUP_ENV = "JOURNEY_STREAM_GROUP"
DEFAULT_STREAM_GROUP = "journey-decide"
OPPORTUNITY = "opportunity"
TRIGGER_CART = "cart.abandoned"
TRIGGER_OPPORTUNITY = "lifecycle.opportunity"
_CONTACT_STAGE_TYPES = ("contact.created", "contact.updated")


@dataclass
class StreamSummary:
    """What a :func:`run_stream` call did. ``events``: messages read (tombstones included);
    ``triggers``: triggering events decided; ``offers``: of those, live offers;
    ``rejected``: records the schema refused; ``batches``: polls committed."""

    events: int = 0
    triggers: int = 0
    offers: int = 0
    rejected: int = 0
    skipped_erased: int = 0
    batches: int = 0
    crm_confirmed: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class TriggerDetector:
    """Which events trigger a decision, remembering each contact's last stage seen."""

    def __init__(self) -> None:
        self.last_stage: dict[str, str | None] = {}
        self.deleted: set[str] = set()

    def trigger_type(self, event: CanonicalEvent, raw: bytes) -> str | None:
        """``cart.abandoned``, ``lifecycle.opportunity`` or None for ``event``; updates the
        remembered stage and deletions."""
        contact = event.payload.contact_id
        if event.type == "contact.deleted":
            self.deleted.add(contact)
            self.last_stage.pop(contact, None)
            return None
        if event.type == TRIGGER_CART:
            return TRIGGER_CART
        if event.type not in _CONTACT_STAGE_TYPES:
            return None
        stage = getattr(event.payload, "lifecycle_stage", None)
        previous = self.last_stage.get(contact)
        if event.source == DEBEZIUM_SOURCE:
            previous = _debezium_previous_stage(raw, previous)
        self.last_stage[contact] = stage
        self.deleted.discard(contact)  # a re-created contact is a contact again
        if stage == OPPORTUNITY and previous != OPPORTUNITY:
            return TRIGGER_OPPORTUNITY
        return None


def _debezium_previous_stage(raw: bytes, fallback: str | None) -> str | None:
    """The ``before`` row's lifecycle stage of a Debezium envelope (``fallback`` if absent)."""
    try:
        envelope = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return fallback
    if isinstance(envelope, dict) and not is_debezium(envelope):
        return fallback
    if "op" not in envelope and isinstance(envelope.get("payload"), dict):
        envelope = envelope["payload"]
    before = envelope.get("before")
    if isinstance(before, dict):
        stage = before.get("lifecycle_stage")
        return stage if isinstance(stage, str) else None
    return fallback


def stream_consumer_config(settings: Settings, bootstrap: str, group_id: str) -> dict[str, Any]:
    """Manual commits from the earliest uncommitted event, in the decision group."""
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
    }


def _next_offsets(messages: list[Message]) -> list[TopicPartition]:
    highest: dict[tuple[str, int], int] = {}
    for message in messages:
        key = (message.topic(), message.partition())
        highest[key] = max(highest.get(key, -1), message.offset())
    return [TopicPartition(t, p, o + 1) for (t, p), o in highest.items()]


class StreamDecider:
    """Turns polled messages into decisions, durable writes and CRM tasks.

    :meth:`process` does everything for one batch except committing the offsets, which it
    returns, so the caller commits only after the batch is durable."""

    def __init__(self, service: DecisionService, *, dispatch: bool = True) -> None:
        self.service = service
        self.dispatch = dispatch
        self.detector = TriggerDetector()
        self.summary = StreamSummary()

    def _send(self) -> None:
        self.summary.crm_confirmed += self.service.dispatch().confirmed

    def process(self, messages: list[Message]) -> list[TopicPartition]:
        """Decide, flush and dispatch for ``messages``; return the offsets to commit."""
        requests: list[DecisionRequest] = []
        started = time.perf_counter()
        for message in messages:
            self.summary.events += 1
            raw = message.value()
            if raw is None:  # tombstone after a Debezium delete
                continue
            try:
                event = validate_record(raw)
            except RecordRejected as exc:
                self.summary.rejected += 1
                logger.warning(
                    "skipping %s/%d/%d: %s",
                    message.topic(),
                    message.partition(),
                    message.offset(),
                    exc.reason,
                )
                continue
            trigger = self.detector.trigger_type(event, raw)
            if trigger is None:
                continue
            if event.payload.contact_id in self.detector.deleted:
                self.summary.skipped_erased += 1
                continue
            requests.append(
                DecisionRequest(
                    contact_id=event.payload.contact_id,
                    trigger_event_id=event.event_id,
                    trigger_type=trigger,
                    decided_at=datetime.now(UTC),
                )
            )
        if requests:
            answers = self.service.decide_many(requests)
            self.summary.triggers += len(answers)
            self.summary.offers += sum(
                a["action"] != "no_offer" and a["mode"] == "live" for a in answers
            )
            elapsed = time.perf_counter() - started
            for _ in answers:
                self.service.metrics.latency.labels("stream").observe(elapsed)
        # Durable before the commit: offers in the outbox, decisions in the log. The outbox
        # is dispatched as soon as the offers are in it, before the decision-log append: a
        # crash in between replays the events, decided again with the same decision_ids,
        # which the outbox has already confirmed.
        send = self.dispatch and bool(requests) and self.service.config.mode == "live"
        sent: list[bool] = []

        def send_once() -> None:
            sent.append(True)
            self._send()

        self.service.flush(after_outbox=send_once if send else None)
        if send and not sent:  # nothing new to flush (a replay): offers may still be due
            self._send()
        self.summary.batches += 1
        return _next_offsets(messages)


def _poll_batch(
    consumer: Consumer, wanted: int, idle_timeout_s: float | None, stop: threading.Event
) -> list[Message]:
    """Up to ``wanted`` messages: waits for the first (giving up after ``idle_timeout_s``,
    or never), then takes what is already there. Partition-end notices are skipped."""
    deadline = None if idle_timeout_s is None else time.monotonic() + idle_timeout_s
    while not stop.is_set():
        good = consume_messages(consumer, wanted, 0.05)
        if good:
            return good
        if deadline is not None and time.monotonic() >= deadline:
            return []
    return []


def run_stream(
    settings: Settings,
    bootstrap: str | None = None,
    max_events: int | None = None,
    idle_timeout_s: float | None = None,
    *,
    service: DecisionService | None = None,
    group_id: str | None = None,
    topic: str | None = None,
    poll_batch: int = 500,
    extra_config: Mapping[str, Any] | None = None,
    stop: threading.Event | None = None,
    on_batch: Callable[[StreamSummary], None] | None = None,
) -> dict[str, Any]:
    """Consume CRM events and decide on triggers until ``max_events`` events were read, no
    event came for ``idle_timeout_s`` seconds, ``stop`` is set, or SIGTERM/SIGINT (when run
    in the main thread). Returns the :class:`StreamSummary` as a dict plus the group id.

    ``bootstrap`` defaults to ``settings.kafka_bootstrap_servers``; ``service`` to a new
    :class:`DecisionService` (without its background threads: the loop flushes and
    dispatches itself), closed at the end. A given ``service`` is used as it is and left open.
    """
    bootstrap = bootstrap or settings.kafka_bootstrap_servers
    if not bootstrap:
        raise ValueError(
            "no Kafka bootstrap servers: pass bootstrap or set JOURNEY_KAFKA_BOOTSTRAP"
        )
    group = group_id or os.environ.get(STREAM_GROUP_ENV) or DEFAULT_STREAM_GROUP
    stop = stop or threading.Event()
    owned = service is None
    if service is None:
        service = DecisionService(settings, ServiceConfig.from_env(os.environ))
        service.start(background=False)
    if not service.ready:
        service.refresh_policy(force=True)
    if service.served is None:
        if owned:
            service.close()
        raise RuntimeError(f"the decision service is not ready: {service.state.detail}")
    consumer = Consumer(
        {**stream_consumer_config(settings, bootstrap, group), **(extra_config or {})}
    )
    previous_handlers = _install_signal_handlers(stop)
    decider = StreamDecider(service)
    next_refresh = time.monotonic() + service.config.model_poll_s
    try:
        consumer.subscribe([topic or settings.kafka_topic])
        while not stop.is_set() and (max_events is None or decider.summary.events < max_events):
            wanted = (
                poll_batch
                if max_events is None
                else min(poll_batch, max_events - decider.summary.events)
            )
            messages = _poll_batch(consumer, wanted, idle_timeout_s, stop)
            if not messages:
                break
            offsets = decider.process(messages)
            consumer.commit(offsets=offsets, asynchronous=False)
            if on_batch is not None:
                on_batch(decider.summary)
            if time.monotonic() >= next_refresh:
                # Without background threads the loop polls the champion itself.
                service.refresh_policy()
                next_refresh = time.monotonic() + service.config.model_poll_s
    finally:
        _restore_signal_handlers(previous_handlers)
        consumer.close()
        if owned:
            service.close()
    return {**decider.summary.as_dict(), "group_id": group}


def _install_signal_handlers(stop: threading.Event) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, lambda *_: stop.set())
    return previous


def _restore_signal_handlers(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
