"""The bulk SQL path and the pydantic schema accept and reject the same records, for the
same reason."""

from __future__ import annotations

import json
import random
import uuid

from observe_helpers import line, make_event, query

from journey_pipeline.observe.ingest import RawRecord, ingest_records
from journey_pipeline.observe.schema import EVENT_TYPES, RecordRejected, validate_record

# Values each field is tried with: valid ones, wrong JSON kinds, empty, boundary cases.
CANDIDATES = {
    "event_id": [
        None,
        5,
        "",
        "nope",
        "1B4E28BA-2D11-4B6A-9E7C-5F1A2B3C4D5E",
        ["x"],
        "1b4e28ba-2d11-4b6a-9e7c-5f1a2b3c4d5",
        "{1b4e28ba-2d11-4b6a-9e7c-5f1a2b3c4d5e}",
    ],
    "timestamp": [
        None,
        0,
        "",
        "2026-01-17",
        "2026-01-17T12:34:56",
        "2026-01-17 12:34:56Z",
        "2026-01-17T12:34:56.123456Z",
        "2026-01-17T12:34:56.1234567Z",
        "2026-01-17T12:34:56z",
        "2026-01-17T12:34:56+05:30",
        "2026-01-17T12:34:56-23:59",
        "2026-01-17T12:34:56+24:00",
        "2026-01-17T12:34:56+0200",
        "2026-02-29T00:00:00Z",
        "2028-02-29T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-01-17T24:00:00Z",
        "2026-01-17T23:59:60Z",
        "0000-01-01T00:00:00Z",
        "0001-01-01T00:30:00+01:00",
        "9999-12-31T23:30:00-01:00",
        "2026-01-17T12:34:56.5",
        " 2026-01-17T12:34:56Z",
    ],
    "type": [None, 1, "", "Contact.Created", "contact.merged", *EVENT_TYPES],
    "source": [None, "", 3, "salesforce", {"a": 1}],
    "payload": [None, "C-1", [], {}, {"contact_id": None}, {"contact_id": ""}],
}
PAYLOAD_CANDIDATES = {
    "contact_id": [None, "", 12, "C-1", "Ç-ü"],
    "email": [None, 5, "", "A@B.io", "  x@y.z "],
    "phone": [None, "+1 555", 15550100, "n/a"],
    "lifecycle_stage": [None, "lead", 3],
    "amount": [None, -1, 0, 0.01, "9.99", True, 1e308, 12],
    "currency": [None, "", "EUR", 978],
    "order_id": [None, "", "O-1"],
    "decision_id": [None, "", "D-1", 4],
    "action": [None, "", "offer_a", "offer_z", "no_offer"],
    "product_id": [None, "", "P-1", 9],
}


def fuzz_corpus(n: int, seed: int = 7) -> list[bytes]:
    """Valid events with one to three fields replaced or removed, each with a unique id."""
    rng = random.Random(seed)
    corpus = []
    for _ in range(n):
        event = make_event(
            rng.choice(EVENT_TYPES), event_id=str(uuid.UUID(int=rng.getrandbits(128)))
        )
        for _ in range(rng.randint(1, 3)):
            if rng.random() < 0.5:
                field = rng.choice(list(CANDIDATES))
                if rng.random() < 0.15:
                    event.pop(field, None)
                else:
                    event[field] = rng.choice(CANDIDATES[field])
            elif isinstance(event.get("payload"), dict):
                field = rng.choice(list(PAYLOAD_CANDIDATES))
                if rng.random() < 0.15:
                    event["payload"].pop(field, None)
                else:
                    event["payload"][field] = rng.choice(PAYLOAD_CANDIDATES[field])
        corpus.append(line(event))
    return corpus


HAND_MADE = [
    b"not json",
    b"{",
    b'"just a string"',
    b"42",
    b"null",
    b"[]",
    b"\xc3\x28 invalid utf-8",
    line(make_event("payment.succeeded")).replace(b"42.5", b"NaN"),
    line(make_event("payment.succeeded")).replace(b"42.5", b"-Infinity"),
    line(make_event("payment.succeeded")).replace(b"42.5", b"1e400"),
    line({"op": "c", "after": {"contact_id": "C-5", "email": "d@b.z"}, "ts_ms": 1768653296000}),
    line({"op": "r", "after": {"contact_id": "C-6"}, "source": {"ts_ms": 1768653296001}}),
    line({"op": "d", "before": {"contact_id": "C-7"}, "after": None, "ts_ms": 1768653296002}),
    line({"op": "u", "after": {"contact_id": 5}, "ts_ms": 1768653296003}),
    line({"op": "u", "after": None, "ts_ms": 1768653296004}),
    line({"op": "q", "after": {"contact_id": "C-8"}, "ts_ms": 1768653296005}),
    line({"op": "c", "after": {"contact_id": "C-8"}, "ts_ms": -1}),
    line({"op": "c", "after": {"contact_id": "C-8"}, "ts_ms": 1.5}),
    line({"op": "c", "after": {"contact_id": "C-8"}}),
    line({"schema": {}, "payload": {"op": "c", "after": {"contact_id": "C-9"}, "ts_ms": 7}}),
    line({"op": "c", "type": "contact.created"}),
]


def sql_outcomes(settings, corpus: list[bytes]) -> dict[str, str | None]:
    """Position -> dead-letter reason key (None if accepted) through the bulk path."""
    records = [RawRecord(raw, "kafka", f"t/0/{i}") for i, raw in enumerate(corpus)]
    summary = ingest_records(records, settings)
    assert summary.received == len(corpus)
    letters = dict(query(settings, "SELECT position, reason FROM ops.dead_letter"))
    return {
        r.position: (letters[r.position].split(":")[0] if r.position in letters else None)
        for r in records
    }


def schema_outcome(raw: bytes) -> str | None:
    try:
        validate_record(raw)
    except RecordRejected as rejection:
        return rejection.key
    return None


def test_bulk_and_schema_paths_agree_on_every_record(settings):
    corpus = HAND_MADE + fuzz_corpus(600)
    outcomes = sql_outcomes(settings, corpus)
    disagreements = [
        (raw[:160], outcomes[f"t/0/{i}"], schema_outcome(raw))
        for i, raw in enumerate(corpus)
        if outcomes[f"t/0/{i}"] != schema_outcome(raw)
    ]
    assert disagreements == []
    accepted = sum(1 for v in outcomes.values() if v is None)
    # The corpus exercises both sides: plenty accepted, plenty rejected.
    assert 50 < accepted < len(corpus) - 200


def test_accepted_events_carry_the_schema_values(settings):
    events = [make_event(t) for t in EVENT_TYPES]
    events[0]["timestamp"] = "2026-01-17T01:30:00.25+02:00"
    sql_outcomes(settings, [line(e) for e in events])
    rows = query(
        settings,
        "SELECT event_id, occurred_at, event_type, contact_id, amount, payload FROM raw.events",
    )
    by_id = {r[0]: r for r in rows}
    for event in events:
        model = validate_record(line(event))
        row = by_id[model.event_id]
        assert row[1] == model.timestamp.replace(tzinfo=None)
        assert row[2] == model.type
        assert row[3] == model.payload.contact_id
        assert row[4] == getattr(model.payload, "amount", None)
        assert json.loads(row[5])["contact_id"] == "C-1"
