"""Keyed tokens for personal data: raw email addresses and phone numbers never pass ingestion.

A token is ``HMAC-SHA256(key, normalised value)`` as 64 lower-case hex characters, with the key
from ``Settings.pii_key`` (``JOURNEY_PII_KEY``). Normalisation makes the same person's value
give the same token however a CRM spelled it:

- email: surrounding ASCII whitespace stripped, then ASCII letters lower-cased (only ASCII:
  Unicode case mapping differs between libraries, e.g. for a final sigma, and a token must not
  depend on which side computed it);
- phone: the digits 0-9 only, with a leading ``+`` kept if the value starts with one.

A value that normalises to the empty string (``""``, ``"n/a"`` as a phone) gets no token.

The bulk file path computes the same tokens inside DuckDB for speed: :func:`hmac_sql` builds the
SQL expression, using ``HMAC(K, m) = H((K ^ opad) || H((K ^ ipad) || m))`` with DuckDB's
``sha256`` over BLOBs; the test suite checks that both sides agree byte for byte.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Any

_ASCII_WHITESPACE = " \t\n\r\f\v"
_NON_DIGITS = re.compile(r"[^0-9]")
_SHA256_BLOCK = 64

# Payload keys that carry personal data, and the token key each one is replaced by.
PII_FIELDS: dict[str, str] = {"email": "email_token", "phone": "phone_token"}


_ASCII_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_TO_ASCII_LOWER = str.maketrans(_ASCII_UPPER, _ASCII_UPPER.lower())


def normalise_email(email: str) -> str:
    """Return ``email`` stripped of surrounding ASCII whitespace, ASCII letters lower-cased."""
    return email.strip(_ASCII_WHITESPACE).translate(_TO_ASCII_LOWER)


def normalise_phone(phone: str) -> str:
    """Return the digits of ``phone``, prefixed by ``+`` if it starts with one (after spaces)."""
    prefix = "+" if phone.lstrip(_ASCII_WHITESPACE).startswith("+") else ""
    digits = _NON_DIGITS.sub("", phone)
    return prefix + digits if digits else ""


def pii_token(key: bytes, normalised: str) -> str | None:
    """HMAC-SHA256 of an already normalised value as hex, or ``None`` for an empty value."""
    if not normalised:
        return None
    return hmac.new(key, normalised.encode("utf-8"), hashlib.sha256).hexdigest()


def email_token(key: bytes, email: str | None) -> str | None:
    """Token of an email address (``None`` in, or nothing left after normalising: ``None``)."""
    return None if email is None else pii_token(key, normalise_email(email))


def phone_token(key: bytes, phone: str | None) -> str | None:
    """Token of a phone number (``None`` in, or no digits: ``None``)."""
    return None if phone is None else pii_token(key, normalise_phone(phone))


def tokenize_payload(payload: Mapping[str, Any], key: bytes) -> dict[str, Any]:
    """Return a copy of ``payload`` with ``email``/``phone`` replaced by ``email_token``/``phone_token``.

    The raw keys are always removed; a token key is only present when there is a token.
    Other keys are kept as they are.
    """
    tokenized = {k: v for k, v in payload.items() if k not in PII_FIELDS}
    tokens = {
        "email_token": email_token(key, payload.get("email")),
        "phone_token": phone_token(key, payload.get("phone")),
    }
    tokenized.update({k: v for k, v in tokens.items() if v is not None})
    return tokenized


def _hmac_pads(key: bytes) -> tuple[bytes, bytes]:
    """The inner and outer padded keys of RFC 2104 for SHA-256."""
    if len(key) > _SHA256_BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_SHA256_BLOCK, b"\x00")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def hmac_sql(key: bytes, message_sql: str) -> str:
    """DuckDB SQL for the hex HMAC-SHA256 of the VARCHAR expression ``message_sql``.

    ``message_sql`` must already be normalised (see :func:`normalise_email_sql`); the key goes
    into the statement as two hex literals, so build statements with this only in-process and
    never log them.
    """
    inner_pad, outer_pad = _hmac_pads(key)
    inner = f"unhex(sha256(unhex('{inner_pad.hex()}') || encode({message_sql})))"
    return f"sha256(unhex('{outer_pad.hex()}') || {inner})"


def normalise_email_sql(value_sql: str) -> str:
    """DuckDB SQL equivalent of :func:`normalise_email` (``NULL`` stays ``NULL``)."""
    stripped = f"regexp_replace({value_sql}, '^[ \\t\\n\\r\\f\\v]+|[ \\t\\n\\r\\f\\v]+$', '', 'g')"
    return f"translate({stripped}, '{_ASCII_UPPER}', '{_ASCII_UPPER.lower()}')"


def normalise_phone_sql(value_sql: str) -> str:
    """DuckDB SQL equivalent of :func:`normalise_phone` (``NULL`` stays ``NULL``)."""
    digits = f"regexp_replace({value_sql}, '[^0-9]', '', 'g')"
    plus = f"regexp_matches({value_sql}, '^[ \\t\\n\\r\\f\\v]*\\+')"
    return f"CASE WHEN {digits} = '' THEN '' WHEN {plus} THEN '+' || {digits} ELSE {digits} END"


def token_sql(key: bytes, normalised_sql: str) -> str:
    """DuckDB SQL for :func:`pii_token`: ``NULL`` for ``NULL`` or an empty normalised value."""
    return f"CASE WHEN coalesce({normalised_sql}, '') = '' THEN NULL ELSE {hmac_sql(key, normalised_sql)} END"
