"""The canonical CRM event: the one schema every source is mapped to before anything else sees it.

These pydantic models are the reference definition of what ingestion accepts; the bulk file
path in :mod:`journey_pipeline.observe.ingest` applies the same rules in DuckDB SQL, and the
test suite checks on a shared corpus that both accept and reject exactly the same records with
the same reason. :func:`event_json_schema` exports the schema for producers.

Rules, in the order they are checked (the first failing rule is the dead-letter reason):

1. the record is at most :data:`MAX_RECORD_BYTES` bytes (``too_large``), valid UTF-8
   (``not_utf8``), JSON (``not_json``) and a JSON object (``not_object``);
2. a Debezium change envelope (an object with ``op`` and no ``type``, optionally wrapped as
   ``{"schema": ..., "payload": {...}}``) is first mapped to a canonical event, see
   :func:`map_debezium`;
3. ``event_id``: a UUID string (any case; stored lower-case);
4. ``timestamp``: ``YYYY-MM-DD[T ]HH:MM:SS[.ffffff]`` followed by ``Z`` or ``+HH:MM``/``-HH:MM``,
   normalised to UTC. A timestamp without a zone is rejected (``naive_timestamp``) rather
   than guessed: the same wall-clock time means different instants in different CRMs;
5. ``type``: one of :data:`EVENT_TYPES` (``unknown_type`` otherwise);
6. ``source``: optional non-empty string (defaults to the transport, ``file`` or ``kafka``);
7. ``payload``: an object with a non-empty string ``contact_id``, plus the fields of its type
   (:data:`PAYLOAD_MODELS`); other payload keys are kept as they come.

A missing key and an explicit ``null`` are the same thing (``missing_field``). Strings are
never coerced to numbers: ``"amount": "12.50"`` is rejected.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from journey_pipeline.actions import ACTION_NAMES

# Larger records are dead-lettered without parsing: no legitimate CRM event comes near this.
MAX_RECORD_BYTES = 1 << 20

CONTACT_TYPES = ("contact.created", "contact.updated", "contact.deleted")
OFFER_TYPES = ("offer.delivered", "offer.opened", "offer.clicked")
EVENT_TYPES: tuple[str, ...] = (
    *CONTACT_TYPES,
    "product.viewed",
    "cart.abandoned",
    "payment.succeeded",
    *OFFER_TYPES,
)

UUID_PATTERN = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"
# Groups: date, time, fraction (with dot), zone. The zone is optional here only so that a naive
# timestamp can be told apart from garbage and rejected with its own reason.
TIMESTAMP_PATTERN = (
    r"^([0-9]{4}-[0-9]{2}-[0-9]{2})[T ]([0-9]{2}:[0-9]{2}:[0-9]{2})(\.[0-9]{1,6})?"
    r"(Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?$"
)
_UUID_RE = re.compile(UUID_PATTERN)
_TIMESTAMP_RE = re.compile(TIMESTAMP_PATTERN)

# Debezium op -> canonical type. 'r' is a snapshot read of a row that already exists: it says
# what the contact looks like now, which is what contact.updated means downstream.
DEBEZIUM_OPS: dict[str, str] = {
    "c": "contact.created",
    "u": "contact.updated",
    "r": "contact.updated",
    "d": "contact.deleted",
}
DEBEZIUM_SOURCE = "debezium"
# Upper bound for Debezium epoch milliseconds: 9999-12-31, the end of the timestamp range.
MAX_EPOCH_MS = 253_402_300_799_999


class RecordRejected(ValueError):
    """A record breaks the schema. ``code`` and ``field`` identify the rule; ``detail`` explains."""

    def __init__(self, code: str, field: str = "", detail: str = "") -> None:
        self.code, self.field, self.detail = code, field, detail
        super().__init__(self.reason)

    @property
    def key(self) -> str:
        """``code`` and ``field`` as one comparable string, e.g. ``missing_field payload.contact_id``."""
        return f"{self.code} {self.field}".strip()

    @property
    def reason(self) -> str:
        """The dead-letter reason: the key, then the human explanation."""
        return f"{self.key}: {self.detail}" if self.detail else self.key


def _err(code: str, detail: str) -> PydanticCustomError:
    return PydanticCustomError(code, detail)


def _require_str(value: Any, *, non_empty: bool = True) -> str:
    if value is None:
        raise _err("missing_field", "is required")
    if not isinstance(value, str) or (non_empty and value == ""):
        raise _err("invalid_field", "must be a non-empty string")
    return value


def _optional_str(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _err("invalid_field", "must be a string or null")
    return value


class EventPayload(BaseModel):
    """Fields every payload has. Unknown keys are kept (``extra="allow"``)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    # Checked in this order, after contact_id, by both validation paths.
    required_strings: ClassVar[tuple[str, ...]] = ()
    optional_strings: ClassVar[tuple[str, ...]] = ()

    contact_id: str = Field(description="The CRM's contact identifier.")

    @field_validator("contact_id", mode="before")
    @classmethod
    def _contact_id(cls, value: Any) -> str:
        return _require_str(value)


class ContactPayload(EventPayload):
    """contact.created / contact.updated / contact.deleted: the contact's CRM fields."""

    optional_strings: ClassVar[tuple[str, ...]] = ("email", "phone", "lifecycle_stage", "status")

    email: str | None = Field(None, description="Raw email; replaced by email_token on ingest.")
    phone: str | None = Field(None, description="Raw phone; replaced by phone_token on ingest.")
    lifecycle_stage: str | None = None
    status: str | None = None

    @field_validator("email", "phone", "lifecycle_stage", "status", mode="before")
    @classmethod
    def _strings(cls, value: Any) -> str | None:
        return _optional_str(value)


class ProductViewedPayload(EventPayload):
    """product.viewed: which product the contact looked at."""

    required_strings: ClassVar[tuple[str, ...]] = ("product_id",)

    product_id: str

    @field_validator("product_id", mode="before")
    @classmethod
    def _product(cls, value: Any) -> str:
        return _require_str(value)


class CartAbandonedPayload(EventPayload):
    """cart.abandoned: optionally the product left in the cart."""

    optional_strings: ClassVar[tuple[str, ...]] = ("product_id",)

    product_id: str | None = None

    @field_validator("product_id", mode="before")
    @classmethod
    def _product(cls, value: Any) -> str | None:
        return _optional_str(value)


class PaymentPayload(EventPayload):
    """payment.succeeded: a finite amount > 0, its currency and order, and the decision if any."""

    required_strings: ClassVar[tuple[str, ...]] = ("currency", "order_id")
    optional_strings: ClassVar[tuple[str, ...]] = ("decision_id",)

    amount: float = Field(description="A JSON number, finite and > 0.")
    currency: str
    order_id: str
    decision_id: str | None = None

    @field_validator("amount", mode="before")
    @classmethod
    def _amount(cls, value: Any) -> float:
        if value is None:
            raise _err("missing_field", "is required")
        # bool is an int in Python but not a number in JSON.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _err("invalid_amount", "must be a JSON number")
        if not math.isfinite(float(value)) or float(value) <= 0:
            raise _err("invalid_amount", "must be finite and greater than 0")
        return float(value)

    @field_validator("currency", "order_id", mode="before")
    @classmethod
    def _required(cls, value: Any) -> str:
        return _require_str(value)

    @field_validator("decision_id", mode="before")
    @classmethod
    def _decision(cls, value: Any) -> str | None:
        return _optional_str(value)


class OfferPayload(EventPayload):
    """offer.delivered / opened / clicked: the decision it belongs to and the action taken."""

    required_strings: ClassVar[tuple[str, ...]] = ("decision_id", "action")

    decision_id: str
    action: str = Field(description=f"One of {', '.join(ACTION_NAMES)}.")

    @field_validator("decision_id", mode="before")
    @classmethod
    def _decision(cls, value: Any) -> str:
        return _require_str(value)

    @field_validator("action", mode="before")
    @classmethod
    def _action(cls, value: Any) -> str:
        value = _require_str(value)
        if value not in ACTION_NAMES:
            raise _err("invalid_field", f"must be one of {', '.join(ACTION_NAMES)}")
        return value


PAYLOAD_MODELS: dict[str, type[EventPayload]] = {
    **dict.fromkeys(CONTACT_TYPES, ContactPayload),
    "product.viewed": ProductViewedPayload,
    "cart.abandoned": CartAbandonedPayload,
    "payment.succeeded": PaymentPayload,
    **dict.fromkeys(OFFER_TYPES, OfferPayload),
}


def parse_timestamp(value: str) -> datetime:
    """Parse an ISO-8601 timestamp with a zone into an aware UTC datetime.

    Raises ``PydanticCustomError`` ``naive_timestamp`` for a valid time without a zone and
    ``invalid_field`` for anything else that is not a timestamp of the accepted form.
    """
    match = _TIMESTAMP_RE.match(value)
    if not match:
        raise _err("invalid_field", "must look like 2026-01-17T12:34:56Z")
    date_part, time_part, fraction, zone = match.groups()
    try:
        local = datetime.fromisoformat(f"{date_part}T{time_part}{fraction or ''}")
    except ValueError as exc:
        raise _err("invalid_field", f"is not a real date and time ({exc})") from None
    if zone is None:
        raise _err("naive_timestamp", "has no zone (append Z or +HH:MM)")
    if zone == "Z":
        return local.replace(tzinfo=UTC)
    sign = 1 if zone[0] == "+" else -1
    offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    try:
        naive_utc = local - sign * offset
    except OverflowError:
        raise _err("invalid_field", "falls outside years 1-9999 in UTC") from None
    return naive_utc.replace(tzinfo=UTC)


class CanonicalEvent(BaseModel):
    """One CRM event after validation: UTC timestamp, known type, typed payload."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: str = Field(description="A UUID, stored lower-case; the deduplication key.")
    timestamp: datetime = Field(description="ISO-8601 with Z or an offset; stored in UTC.")
    type: Literal[EVENT_TYPES] = Field(description="The event type.")  # type: ignore[valid-type]
    source: str | None = Field(None, description="The system the event comes from.")
    payload: EventPayload = Field(description="Object with contact_id and the type's fields.")

    @field_validator("event_id", mode="before")
    @classmethod
    def _event_id(cls, value: Any) -> str:
        value = _require_str(value)
        if not _UUID_RE.match(value):
            raise _err("invalid_field", "must be a UUID")
        return value.lower()

    @field_validator("timestamp", mode="before")
    @classmethod
    def _timestamp(cls, value: Any) -> datetime:
        return parse_timestamp(_require_str(value))

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, value: Any) -> str:
        if value is None:
            raise _err("missing_field", "is required")
        if value not in EVENT_TYPES:
            raise _err("unknown_type", f"must be one of {', '.join(EVENT_TYPES)}")
        return value

    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, value: Any) -> str | None:
        if value is not None and (not isinstance(value, str) or value == ""):
            raise _err("invalid_field", "must be a non-empty string or absent")
        return value

    @field_validator("payload", mode="before")
    @classmethod
    def _payload(cls, value: Any, info: Any) -> EventPayload:
        if value is None:
            raise _err("missing_field", "is required")
        if not isinstance(value, dict):
            raise _err("invalid_field", "must be an object")
        event_type = info.data.get("type")
        model = PAYLOAD_MODELS.get(event_type, EventPayload)
        try:
            return model.model_validate(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise _err(first["type"], f"{first['loc'][0]}|{first['msg']}") from None


def _first_rejection(exc: ValidationError) -> RecordRejected:
    """The rule of the first failing field, in declaration order (as the SQL path checks)."""
    first = exc.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    code, message = first["type"], first["msg"]
    if field == "payload" and "|" in message:
        sub_field, message = message.split("|", 1)
        field = f"payload.{sub_field}"
    if code == "missing":
        code, message = "missing_field", "is required"
    return RecordRejected(code, field, message)


def debezium_event_id(op: str, source: Any, before: Any, after: Any) -> str:
    """A UUID-shaped id from the change's position (``source``) and content, never its arrival.

    Redelivery of the same change gives the same id, so deduplication absorbs it; the
    envelope's own ``ts_ms`` (when the connector processed it) is left out on purpose.
    """

    def compact(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

    text = "|".join([op, compact(source), compact(before), compact(after)])
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-8{digest[13:16]}-8{digest[17:20]}-{digest[20:32]}"


def is_debezium(obj: dict[str, Any]) -> bool:
    """Whether a JSON object is a Debezium change envelope rather than a canonical event."""
    if "type" in obj:
        return False
    if "op" in obj:
        return True
    inner = obj.get("payload")
    return "schema" in obj and isinstance(inner, dict) and "op" in inner


def map_debezium(envelope: dict[str, Any]) -> dict[str, Any]:
    """Map a Debezium contact change envelope to a canonical event dict.

    - ``op``: ``c`` -> contact.created, ``u``/``r`` -> contact.updated, ``d`` -> contact.deleted;
    - payload: the ``after`` row (the ``before`` row for ``d``), i.e. the CRM's contact columns;
    - timestamp: ``source.ts_ms`` (commit time in the CRM database) if present, else ``ts_ms``,
      epoch milliseconds in UTC;
    - event_id: :func:`debezium_event_id`; source: ``debezium``.

    Raises :class:`RecordRejected` (``invalid_debezium``) when the envelope cannot be mapped.
    """
    if "op" not in envelope and isinstance(envelope.get("payload"), dict):
        envelope = envelope["payload"]
    op = envelope.get("op")
    if not isinstance(op, str) or op not in DEBEZIUM_OPS:
        raise RecordRejected("invalid_debezium", "op", "must be one of c, u, d, r")
    row_key = "before" if op == "d" else "after"
    row = envelope.get(row_key)
    if not isinstance(row, dict):
        raise RecordRejected("invalid_debezium", row_key, "must be an object for this op")
    source = envelope.get("source")
    ts_ms = source.get("ts_ms") if isinstance(source, dict) else None
    if ts_ms is None:
        ts_ms = envelope.get("ts_ms")
    if isinstance(ts_ms, bool) or not isinstance(ts_ms, int) or not 0 <= ts_ms <= MAX_EPOCH_MS:
        raise RecordRejected("invalid_debezium", "ts_ms", "must be epoch milliseconds")
    occurred = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ts_ms)
    return {
        "event_id": debezium_event_id(op, source, envelope.get("before"), envelope.get("after")),
        "timestamp": occurred.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "type": DEBEZIUM_OPS[op],
        "source": DEBEZIUM_SOURCE,
        "payload": row,
    }


def validate_record(raw: bytes) -> CanonicalEvent:
    """Validate one raw record (the bytes of a line or a message) into a :class:`CanonicalEvent`.

    Raises :class:`RecordRejected` naming the first rule it breaks.
    """
    if len(raw) > MAX_RECORD_BYTES:
        raise RecordRejected("too_large", "", f"{len(raw)} bytes > limit {MAX_RECORD_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordRejected("not_utf8", "", str(exc)) from None
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise RecordRejected("not_json", "", str(exc)) from None
    if not isinstance(obj, dict):
        raise RecordRejected("not_object", "", f"JSON {type(obj).__name__}, not an object")
    if is_debezium(obj):
        obj = map_debezium(obj)
    try:
        return CanonicalEvent.model_validate(obj)
    except ValidationError as exc:
        raise _first_rejection(exc) from None


def event_json_schema() -> dict[str, Any]:
    """JSON Schema of the canonical event, with each payload type's schema under ``$defs``."""
    schema = CanonicalEvent.model_json_schema()
    defs = schema.setdefault("$defs", {})
    for model in dict.fromkeys(PAYLOAD_MODELS.values()):
        defs[model.__name__] = model.model_json_schema()
    schema["properties"]["timestamp"]["pattern"] = TIMESTAMP_PATTERN
    schema["properties"]["event_id"]["pattern"] = UUID_PATTERN
    return schema
