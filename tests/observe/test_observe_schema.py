"""The canonical schema (pydantic): rules, reasons, UTC normalising, Debezium mapping, JSON Schema."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from observe_helpers import line, make_event

from journey_pipeline.observe.schema import (
    EVENT_TYPES,
    MAX_RECORD_BYTES,
    RecordRejected,
    event_json_schema,
    map_debezium,
    validate_record,
)


def rejection_key(raw: bytes) -> str:
    with pytest.raises(RecordRejected) as info:
        validate_record(raw)
    return info.value.key


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_every_event_type_validates(event_type):
    event = validate_record(line(make_event(event_type)))
    assert event.type == event_type
    assert event.payload.contact_id == "C-1"


def test_timestamp_with_offset_is_normalised_to_utc_and_event_id_lower_cased():
    event = validate_record(
        line(
            make_event(
                timestamp="2026-01-17T01:30:00.25+02:00",
                event_id="1B4E28BA-2D11-4B6A-9E7C-5F1A2B3C4D5E",
            )
        )
    )
    assert event.timestamp == datetime(2026, 1, 16, 23, 30, 0, 250000, tzinfo=UTC)
    assert event.event_id == "1b4e28ba-2d11-4b6a-9e7c-5f1a2b3c4d5e"


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (b"not json", "not_json"),
        (b"[1, 2]", "not_object"),
        (b"\xff\xfe{}", "not_utf8"),
        (b" " * (MAX_RECORD_BYTES + 1), "too_large"),
        (
            line({k: v for k, v in make_event().items() if k != "event_id"}),
            "missing_field event_id",
        ),
        (line(make_event(event_id="not-a-uuid")), "invalid_field event_id"),
        (line(make_event(timestamp=None)), "missing_field timestamp"),
        (line(make_event(timestamp="yesterday")), "invalid_field timestamp"),
        (line(make_event(timestamp="2026-02-30T00:00:00Z")), "invalid_field timestamp"),
        (line(make_event(timestamp="2026-01-17T12:34:56")), "naive_timestamp timestamp"),
        (line(make_event(timestamp=1768653296)), "invalid_field timestamp"),
        (line(make_event(type="contact.merged")), "unknown_type type"),
        (line({k: v for k, v in make_event().items() if k != "type"}), "missing_field type"),
        (line(make_event(source="")), "invalid_field source"),
        (line(make_event(payload=None)), "missing_field payload"),
        (line(make_event(payload=["C-1"])), "invalid_field payload"),
        (line(make_event(payload={"email": "a@b.c"})), "missing_field payload.contact_id"),
        (line(make_event(payload={"contact_id": 7})), "invalid_field payload.contact_id"),
        (line(make_event(payload={"contact_id": "C", "email": 5})), "invalid_field payload.email"),
    ],
)
def test_each_rule_has_its_own_reason(raw, key):
    assert rejection_key(raw) == key


@pytest.mark.parametrize(
    ("amount", "key"),
    [
        (-5, "invalid_amount payload.amount"),
        (0, "invalid_amount payload.amount"),
        ("12.50", "invalid_amount payload.amount"),
        (True, "invalid_amount payload.amount"),
        (None, "missing_field payload.amount"),
    ],
)
def test_payment_amount_must_be_a_positive_finite_number(amount, key):
    event = make_event("payment.succeeded")
    event["payload"]["amount"] = amount
    assert rejection_key(line(event)) == key


def test_non_finite_amount_is_rejected():
    raw = line(make_event("payment.succeeded")).replace(b"42.5", b"Infinity")
    assert rejection_key(raw) == "invalid_amount payload.amount"


def test_offer_action_must_be_in_the_catalogue():
    event = make_event("offer.clicked")
    event["payload"]["action"] = "offer_z"
    assert rejection_key(line(event)) == "invalid_field payload.action"


def test_debezium_update_maps_to_contact_updated_with_a_content_derived_id():
    envelope = {
        "before": {"contact_id": "C-9", "email": "old@x.io"},
        "after": {"contact_id": "C-9", "email": "new@x.io", "lifecycle_stage": "mql"},
        "op": "u",
        "ts_ms": 1768653296999,
        "source": {"ts_ms": 1768653296000, "db": "crm", "table": "contacts", "lsn": 42},
    }
    event = validate_record(line(envelope))
    assert event.type == "contact.updated"
    assert event.source == "debezium"
    assert event.timestamp == datetime(2026, 1, 17, 12, 34, 56, tzinfo=UTC)
    assert event.payload.email == "new@x.io"
    # Redelivery (even re-processed later by the connector) gives the same id...
    assert map_debezium({**envelope, "ts_ms": 1})["event_id"] == event.event_id
    # ...and another change position gives another one.
    moved = {**envelope, "source": {**envelope["source"], "lsn": 43}}
    assert map_debezium(moved)["event_id"] != event.event_id


def test_debezium_delete_uses_the_before_row_and_schema_wrapping_is_unwrapped():
    envelope = {"before": {"contact_id": "C-9"}, "after": None, "op": "d", "ts_ms": 5}
    wrapped = {"schema": {"type": "struct"}, "payload": envelope}
    assert validate_record(line(wrapped)).type == "contact.deleted"
    assert validate_record(line(wrapped)).payload.contact_id == "C-9"
    assert rejection_key(line({**envelope, "op": "x"})) == "invalid_debezium op"
    assert rejection_key(line({**envelope, "before": None})) == "invalid_debezium before"
    assert rejection_key(line({**envelope, "ts_ms": "soon"})) == "invalid_debezium ts_ms"


def test_json_schema_export_describes_the_event_and_every_payload():
    schema = event_json_schema()
    json.dumps(schema)  # serialisable
    assert set(schema["required"]) >= {"event_id", "timestamp", "type", "payload"}
    assert {"PaymentPayload", "OfferPayload", "ContactPayload"} <= set(schema["$defs"])
    assert "amount" in schema["$defs"]["PaymentPayload"]["properties"]
