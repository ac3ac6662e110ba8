"""Helpers for the observe tests: canonical events, JSONL files, warehouse queries."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import duckdb


def make_event(event_type: str = "contact.updated", **overrides: Any) -> dict[str, Any]:
    """A valid canonical event of ``event_type``; ``overrides`` replace top-level keys."""
    payloads: dict[str, dict[str, Any]] = {
        "contact.created": {
            "contact_id": "C-1",
            "email": "Jane.Doe@Example.com ",
            "phone": "+1 (555) 010-9999",
            "lifecycle_stage": "subscriber",
            "status": "active",
        },
        "contact.updated": {
            "contact_id": "C-1",
            "email": "jane.doe@example.com",
            "lifecycle_stage": "lead",
            "status": "active",
        },
        "contact.deleted": {"contact_id": "C-1"},
        "product.viewed": {"contact_id": "C-1", "product_id": "P-7"},
        "cart.abandoned": {"contact_id": "C-1", "product_id": "P-7"},
        "payment.succeeded": {
            "contact_id": "C-1",
            "amount": 42.5,
            "currency": "EUR",
            "order_id": "O-1",
        },
        "offer.delivered": {"contact_id": "C-1", "decision_id": "D-1", "action": "offer_a"},
        "offer.opened": {"contact_id": "C-1", "decision_id": "D-1", "action": "offer_a"},
        "offer.clicked": {"contact_id": "C-1", "decision_id": "D-1", "action": "offer_b"},
    }
    event = {
        "event_id": str(uuid.uuid4()),
        "timestamp": "2026-01-17T12:34:56Z",
        "type": event_type,
        "source": "crm",
        "payload": dict(payloads[event_type]),
    }
    event.update(overrides)
    return event


def line(event: Any) -> bytes:
    """One JSONL line (no newline) for an event or any JSON value."""
    return json.dumps(event).encode()


def write_jsonl(path: Path, records: list[Any], *, final_newline: bool = True) -> Path:
    """Write events (dicts) or raw lines (bytes) as a JSONL file."""
    raw = [r if isinstance(r, bytes) else line(r) for r in records]
    path.write_bytes(b"\n".join(raw) + (b"\n" if final_newline and raw else b""))
    return path


def query(settings: Any, sql: str, params: list[Any] | None = None) -> list[tuple]:
    """Rows of ``sql`` against the test's warehouse (opened read-only, then closed)."""
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()
