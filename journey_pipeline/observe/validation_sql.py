"""The canonical schema's rules as one DuckDB query, for validating records in bulk.

:func:`staging_sql` turns a relation of records (``seq``, ``line`` VARCHAR) into one row per
non-blank record with either a dead-letter ``reason_key`` or the typed, tokenised columns of
``raw.events``. It applies the rules of :mod:`journey_pipeline.observe.schema` in the same
order, with the same ``code field`` keys; the test suite runs both on a shared corpus.
Size, UTF-8 and Debezium mapping happen before, in :mod:`journey_pipeline.observe.ingest`.

Each document is parsed by ``json_transform`` into structs of raw JSON texts (whose first
character gives a field's JSON kind) and of VARCHAR values, rather than by one path lookup per
field: that is what keeps bulk validation within reach of DuckDB's own ``read_json``.

Known, deliberate difference in the JSON grammar: DuckDB's parser also accepts trailing commas
and lower-case ``inf``/``nan`` literals, and keeps the first of duplicate keys (Python keeps the
last). Non-finite numbers are still rejected wherever a number is read (``amount``).
"""

from __future__ import annotations

import json

from journey_pipeline.actions import ACTION_NAMES
from journey_pipeline.observe.pii import normalise_email_sql, normalise_phone_sql, token_sql
from journey_pipeline.observe.schema import (
    CONTACT_TYPES,
    EVENT_TYPES,
    OFFER_TYPES,
    TIMESTAMP_PATTERN,
    UUID_PATTERN,
)

_UTC_FORMATS = [f"%Y-%m-%d{sep}%H:%M:%S{frac}Z" for sep in ("T", " ") for frac in (".%f", "")]

# The fields read, each as raw JSON text through one json_transform per level (a single parse
# of the document, then one of its small payload), so no list of paths is walked per row.
_TOP_FIELDS = ["event_id", "timestamp", "type", "source", "payload"]
_PAYLOAD_FIELDS = [
    "contact_id",
    "email",
    "phone",
    "lifecycle_stage",
    "status",
    "amount",
    "currency",
    "order_id",
    "decision_id",
    "product_id",
    "action",
]
# Three cheap parses instead of one walk per field: the top level as raw JSON texts (whose
# first character tells each field's JSON kind), the payload's fields the same way, and every
# field as VARCHAR (strings unescaped) for the values.
_TOP_STRUCT = json.dumps({name: "JSON" for name in _TOP_FIELDS})
_PAYLOAD_STRUCT = json.dumps({name: "JSON" for name in _PAYLOAD_FIELDS})
_VALUE_STRUCT = json.dumps(
    {
        **{name: "VARCHAR" for name in _TOP_FIELDS if name != "payload"},
        "payload": {name: "VARCHAR" for name in _PAYLOAD_FIELDS},
    }
)


def _sql_list(values: list[str] | tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


def _missing(field: str) -> str:
    # json_transform gives SQL NULL for an absent key and for a JSON null alike.
    return f"j_{field} IS NULL"


def _not_string(field: str) -> str:
    return f"NOT starts_with(j_{field}, '\"')"


def _not_number(field: str) -> str:
    # The first character of JSON text tells its kind: " { [ t f, anything else is a number.
    return f"regexp_matches(j_{field}, '^[\"{{\\[tf]')"


def _required(field: str, label: str) -> str:
    return (
        f"WHEN {_missing(field)} THEN 'missing_field {label}' "
        f"WHEN {_not_string(field)} OR s_{field} = '' THEN 'invalid_field {label}' "
    )


def _optional(field: str, label: str) -> str:
    return f"WHEN NOT {_missing(field)} AND {_not_string(field)} THEN 'invalid_field {label}' "


def _payload_rules() -> str:
    """CASE branches for the type-specific payload fields, in each model's field order."""
    contact = " ".join(
        _optional(f, f"payload.{f}") for f in ("email", "phone", "lifecycle_stage", "status")
    )
    payment = (
        f"WHEN {_missing('amount')} THEN 'missing_field payload.amount' "
        f"WHEN {_not_number('amount')} THEN 'invalid_amount payload.amount' "
        "WHEN amount IS NULL OR NOT isfinite(amount) OR amount <= 0 "
        "THEN 'invalid_amount payload.amount' "
        + _required("currency", "payload.currency")
        + _required("order_id", "payload.order_id")
        + _optional("decision_id", "payload.decision_id")
    )
    offer = (
        _required("decision_id", "payload.decision_id")
        + _required("action", "payload.action")
        + f"WHEN s_action NOT IN {_sql_list(ACTION_NAMES)} THEN 'invalid_field payload.action' "
    )
    return (
        f"WHEN event_type IN {_sql_list(CONTACT_TYPES)} THEN CASE {contact} END "
        "WHEN event_type = 'product.viewed' "
        f"THEN CASE {_required('product_id', 'payload.product_id')} END "
        "WHEN event_type = 'cart.abandoned' "
        f"THEN CASE {_optional('product_id', 'payload.product_id')} END "
        f"WHEN event_type = 'payment.succeeded' THEN CASE {payment} END "
        f"WHEN event_type IN {_sql_list(OFFER_TYPES)} THEN CASE {offer} END "
    )


def staging_sql(records: str, pii_key: bytes) -> str:
    """SELECT over ``records`` (``seq`` BIGINT, ``line`` VARCHAR) validating every record.

    ``line`` must already be valid UTF-8 of at most ``MAX_RECORD_BYTES`` (the caller
    dead-letters the rest). Output columns: ``seq``, ``reason_key`` (NULL when accepted) and,
    for accepted records, every typed column of ``raw.events`` except ``batch_id`` and
    ``ingested_at`` (``source`` is NULL when the event names none). Blank lines are left out:
    they carry nothing. The statement embeds the PII key; never log it.
    """
    email_token = token_sql(pii_key, normalise_email_sql("s_email"))
    phone_token = token_sql(pii_key, normalise_phone_sql("s_phone"))
    json_columns = ", ".join(
        [f"top.{f} AS j_{f}" for f in _TOP_FIELDS] + [f"pj.{f} AS j_{f}" for f in _PAYLOAD_FIELDS]
    )
    value_columns = ", ".join(
        [f"val.{f} AS s_{f}" for f in _TOP_FIELDS if f != "payload"]
        + [f"val.payload.{f} AS s_{f}" for f in _PAYLOAD_FIELDS]
    )
    return f"""
WITH framed AS (
    SELECT seq, line, json_valid(line) AS is_json
    FROM {records}
    -- A blank line is not a record (JSONL writers emit them at the end of files).
    WHERE NOT regexp_full_match(line, '[ \t\n\r]*')
), objects AS (
    SELECT *,
           CASE WHEN is_json THEN regexp_matches(line, '^[ \t\n\r]*[{{]') ELSE false END
             AS is_object
    FROM framed
), top_level AS (
    SELECT *,
           CASE WHEN is_object THEN json_transform(line, '{_TOP_STRUCT}') END AS top,
           CASE WHEN is_object THEN json_transform(line, '{_VALUE_STRUCT}') END AS val
    FROM objects
), payload_level AS (
    SELECT *,
           CASE WHEN starts_with(top.payload, '{{')
                THEN json_transform(top.payload, '{_PAYLOAD_STRUCT}') END AS pj
    FROM top_level
), fields AS (
    SELECT seq, is_json, is_object, top.payload AS payload,
           {json_columns}, {value_columns},
           CASE WHEN NOT {_not_number("amount")} THEN TRY_CAST(s_amount AS DOUBLE) END AS amount,
           -- Fast path for the usual UTC form; other zones go through the full pattern.
           CASE WHEN ends_with(s_timestamp, 'Z') THEN try_strptime(s_timestamp, {_UTC_FORMATS})
           END AS utc_fast
    FROM payload_level
), timestamps AS (
    SELECT *,
           CASE WHEN utc_fast IS NULL
                THEN regexp_extract(s_timestamp, '{TIMESTAMP_PATTERN}', ['d', 't', 'f', 'z'])
                ELSE {{'d': 'fast', 't': '', 'f': '', 'z': 'Z'}}
           END AS ts_parts,
           regexp_full_match(s_timestamp, '{TIMESTAMP_PATTERN[1:-1]}') AS ts_well_formed
    FROM fields
), local_times AS (
    SELECT *,
           CASE WHEN utc_fast IS NOT NULL THEN utc_fast
                WHEN ts_parts.d NOT LIKE '0000-%' THEN
             try_strptime(ts_parts.d || ' ' || ts_parts.t, '%Y-%m-%d %H:%M:%S')
             + to_microseconds(CAST(rpad(coalesce(nullif(substr(ts_parts.f, 2), ''), '0'), 6, '0')
                                    AS BIGINT))
           END AS local_time,
           CASE WHEN ts_parts.z IN ('', 'Z') THEN 0
                ELSE (CASE WHEN ts_parts.z[1] = '-' THEN -1 ELSE 1 END)
                     * (CAST(ts_parts.z[2:3] AS INTEGER) * 60 + CAST(ts_parts.z[5:6] AS INTEGER))
           END AS offset_minutes
    FROM timestamps
), typed AS (
    SELECT *,
           local_time - to_minutes(offset_minutes) AS utc_time,
           s_type AS event_type
    FROM local_times
), judged AS (
    SELECT *,
      CASE
        WHEN NOT is_json THEN 'not_json'
        WHEN NOT is_object THEN 'not_object'
        WHEN {_missing("event_id")} THEN 'missing_field event_id'
        WHEN {_not_string("event_id")}
             OR NOT regexp_full_match(s_event_id, '{UUID_PATTERN[1:-1]}')
          THEN 'invalid_field event_id'
        WHEN {_missing("timestamp")} THEN 'missing_field timestamp'
        WHEN {_not_string("timestamp")} OR NOT ts_well_formed OR local_time IS NULL
          THEN 'invalid_field timestamp'
        WHEN ts_parts.z = '' THEN 'naive_timestamp timestamp'
        WHEN NOT (year(utc_time) BETWEEN 1 AND 9999) THEN 'invalid_field timestamp'
        WHEN {_missing("type")} THEN 'missing_field type'
        WHEN {_not_string("type")} OR s_type NOT IN {_sql_list(EVENT_TYPES)}
          THEN 'unknown_type type'
        WHEN NOT {_missing("source")} AND ({_not_string("source")} OR s_source = '')
          THEN 'invalid_field source'
        WHEN {_missing("payload")} THEN 'missing_field payload'
        WHEN NOT starts_with(j_payload, '{{') THEN 'invalid_field payload'
        {_required("contact_id", "payload.contact_id")}
        ELSE CASE {_payload_rules()} END
      END AS reason_key
    FROM typed
), accepted AS (
    SELECT *,
           CASE WHEN reason_key IS NULL AND s_email IS NOT NULL THEN {email_token} END
             AS email_token,
           CASE WHEN reason_key IS NULL AND s_phone IS NOT NULL THEN {phone_token} END
             AS phone_token
    FROM judged
)
SELECT
    seq,
    reason_key,
    lower(s_event_id) AS event_id,
    utc_time AS occurred_at,
    CAST(utc_time AS DATE) AS event_date,
    event_type,
    s_source AS source,
    s_contact_id AS contact_id,
    s_lifecycle_stage AS lifecycle_stage,
    s_status AS status,
    email_token,
    phone_token,
    amount,
    s_currency AS currency,
    s_order_id AS order_id,
    s_decision_id AS decision_id,
    s_product_id AS product_id,
    CASE
      WHEN reason_key IS NOT NULL THEN NULL
      WHEN j_email IS NULL AND j_phone IS NULL THEN payload
      -- RFC 7386 merge patch: a null removes the raw key, a null token adds nothing.
      ELSE json_merge_patch(payload, json_object('email', NULL, 'phone', NULL,
                                                 'email_token', email_token,
                                                 'phone_token', phone_token))
    END AS payload
FROM accepted
"""
