"""PII tokens: normalisation, keyed HMAC, payload tokenising, and SQL/Python agreement."""

from __future__ import annotations

import hashlib
import hmac

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from journey_pipeline.observe.pii import (
    email_token,
    normalise_email,
    normalise_email_sql,
    normalise_phone,
    normalise_phone_sql,
    phone_token,
    pii_token,
    token_sql,
    tokenize_payload,
)

KEY = b"test-key"


def test_email_normalisation_makes_spellings_of_one_address_share_a_token():
    assert normalise_email("  Jane.Doe@Example.COM\t") == "jane.doe@example.com"
    assert email_token(KEY, " JANE.DOE@example.com") == email_token(KEY, "jane.doe@example.com")
    assert email_token(KEY, "jane.doe@example.com") != email_token(KEY, "john@example.com")


def test_phone_normalisation_keeps_digits_and_a_leading_plus():
    assert normalise_phone(" +1 (555) 010-9999 ") == "+15550109999"
    assert normalise_phone("0049 30 1234") == "0049301234"
    assert normalise_phone("n/a") == ""
    assert phone_token(KEY, "n/a") is None


def test_token_is_hmac_sha256_of_the_normalised_value_with_the_key():
    expected = hmac.new(KEY, b"jane@example.com", hashlib.sha256).hexdigest()
    assert email_token(KEY, "Jane@Example.com") == expected
    assert email_token(b"another-key", "Jane@Example.com") != expected
    assert pii_token(KEY, "") is None


def test_tokenize_payload_replaces_raw_fields_and_keeps_the_rest():
    payload = {"contact_id": "C-1", "email": "a@b.io", "phone": "+1 2", "status": "active"}
    tokenized = tokenize_payload(payload, KEY)
    assert tokenized == {
        "contact_id": "C-1",
        "status": "active",
        "email_token": email_token(KEY, "a@b.io"),
        "phone_token": phone_token(KEY, "+1 2"),
    }
    assert "email" not in tokenize_payload({"contact_id": "C", "email": None}, KEY)
    assert payload["email"] == "a@b.io"  # the input is not modified


@pytest.mark.parametrize("key", [b"k", b"x" * 64, b"long-key-" * 20, bytes(range(256))[:80]])
def test_duckdb_tokens_equal_python_tokens_for_any_key_length(key):
    values = [
        "Jane@Example.com",
        " a.b+c@d.io\n",
        "ÉLODIE@exemple.fr",
        "ΑΣ@İ.gr",
        "",
        "+44 20 7946 0958",
    ]
    with duckdb.connect() as con:
        rows = con.execute(
            f"SELECT {token_sql(key, normalise_email_sql('v'))}, "
            f"{token_sql(key, normalise_phone_sql('v'))} FROM unnest(?) AS t(v)",
            [values],
        ).fetchall()
    assert [r[0] for r in rows] == [email_token(key, v) for v in values]
    assert [r[1] for r in rows] == [phone_token(key, v) for v in values]


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"])), max_size=20)
)
def test_duckdb_and_python_normalise_and_tokenise_identically(values):
    with duckdb.connect() as con:
        rows = con.execute(
            f"SELECT {token_sql(KEY, normalise_email_sql('v'))}, "
            f"{token_sql(KEY, normalise_phone_sql('v'))} FROM unnest(?) WITH ORDINALITY AS t(v, i) "
            "ORDER BY i",
            [values],
        ).fetchall()
    assert [r[0] for r in rows] == [email_token(KEY, v) for v in values]
    assert [r[1] for r in rows] == [phone_token(KEY, v) for v in values]
