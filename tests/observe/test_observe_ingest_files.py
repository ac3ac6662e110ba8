"""File ingestion end to end on a real DuckDB warehouse: bad input, dedup, follow mode, erasure."""

from __future__ import annotations

import json

import pytest
from observe_helpers import line, make_event, query, write_jsonl

from journey_pipeline.observe.cli_ingest import emit_summary, run_ingest
from journey_pipeline.observe.ingest import ingest_files
from journey_pipeline.observe.pii import email_token


def dead_letters(settings):
    return query(
        settings, "SELECT position, raw, reason, source FROM ops.dead_letter ORDER BY position"
    )


def assert_batches_reconcile(settings):
    rows = query(
        settings, "SELECT received, accepted, duplicates, dead_lettered FROM ops.ingest_batches"
    )
    assert rows
    for received, accepted, duplicates, dead_lettered in rows:
        assert received == accepted + duplicates + dead_lettered


BAD_LINES = {
    "not_json": b"this is not json",
    "not_object": b'["an", "array"]',
    "missing_field event_id": line({k: v for k, v in make_event().items() if k != "event_id"}),
    "missing_field timestamp": line({k: v for k, v in make_event().items() if k != "timestamp"}),
    "missing_field type": line({k: v for k, v in make_event().items() if k != "type"}),
    "missing_field payload": line({k: v for k, v in make_event().items() if k != "payload"}),
    "unknown_type type": line(make_event(type="contact.teleported")),
    "invalid_field timestamp": line(make_event(timestamp="17/01/2026 12:34")),
    "naive_timestamp timestamp": line(make_event(timestamp="2026-01-17T12:34:56")),
    "missing_field payload.contact_id": line(make_event(payload={"email": "lost@example.com"})),
    "invalid_amount payload.amount": line(
        make_event(
            "payment.succeeded",
            payload={"contact_id": "C", "amount": -3, "currency": "EUR", "order_id": "O"},
        )
    ),
    "not_utf8": b'{"event_id": "\xff\xfe"}',
}


@pytest.mark.parametrize("reason", sorted(BAD_LINES))
def test_each_bad_line_is_dead_lettered_with_position_bytes_and_reason(settings, landing, reason):
    good_before, good_after = make_event(), make_event("product.viewed")
    path = write_jsonl(
        landing / "events-2026-01-17.jsonl", [good_before, BAD_LINES[reason], good_after]
    )
    summary = ingest_files(None, [path], settings)
    assert (summary.received, summary.accepted, summary.dead_lettered) == (3, 2, 1)
    [(position, raw, why, source)] = dead_letters(settings)
    assert position == f"{path}:2"
    assert why.split(":")[0] == reason
    assert source == "file"
    if b"@" not in BAD_LINES[reason]:
        assert raw == BAD_LINES[reason]
    assert_batches_reconcile(settings)


def test_non_numeric_amount_is_dead_lettered(settings, landing):
    event = make_event("payment.succeeded")
    event["payload"]["amount"] = "12.50"
    path = write_jsonl(landing / "pay.jsonl", [event])
    assert ingest_files(None, [path], settings).reasons == {"invalid_amount payload.amount": 1}


def test_dead_lettered_bytes_hide_email_addresses_and_phones(settings, landing):
    bad = make_event(timestamp="2026-01-17T12:34:56")
    bad["payload"].update(email="jane.doe@example.com", phone="+1 555 0100", note="mail jd@corp.io")
    path = write_jsonl(landing / "e.jsonl", [bad])
    ingest_files(None, [path], settings)
    [(_, raw, _, _)] = dead_letters(settings)
    assert b"example.com" not in raw and b"jd@corp.io" not in raw and b"555" not in raw
    assert b'"lifecycle_stage": "lead"' in raw  # the rest is kept as received


def test_a_10_mb_line_is_dead_lettered_and_the_rest_ingested(settings, landing):
    huge = line(make_event(payload={"contact_id": "C", "blob": "x" * (10 << 20)}))
    path = write_jsonl(landing / "big.jsonl", [make_event(), huge, make_event()])
    summary = ingest_files(None, [path], settings, chunk_bytes=1 << 20)
    assert (summary.accepted, summary.dead_lettered) == (2, 1)
    [(position, raw, reason, _)] = dead_letters(settings)
    assert position.endswith(":2") and reason.startswith("too_large")
    assert len(raw) == len(huge)


def test_an_empty_file_is_a_recorded_batch_of_zero(settings, landing):
    path = landing / "empty.jsonl"
    path.write_bytes(b"")
    summary = ingest_files(None, [path], settings)
    assert (summary.received, summary.accepted) == (0, 0)
    assert query(settings, "SELECT received FROM ops.ingest_batches") == [(0,)]


def test_blank_lines_are_not_records(settings, landing):
    path = write_jsonl(landing / "blank.jsonl", [make_event(), b"", b"  \r", make_event()])
    summary = ingest_files(None, [path], settings)
    assert (summary.received, summary.accepted, summary.dead_lettered) == (2, 2, 0)


def test_the_same_file_twice_accepts_nothing_new(settings, landing):
    events = [make_event(t) for t in ("contact.created", "product.viewed", "payment.succeeded")]
    path = write_jsonl(landing / "day.jsonl", [*events, b"garbage"])
    first = ingest_files(None, [path], settings)
    second = ingest_files(None, [path], settings)
    assert (first.accepted, first.duplicates, first.dead_lettered) == (3, 0, 1)
    assert (second.accepted, second.duplicates) == (0, first.accepted)
    assert query(settings, "SELECT count(*) FROM raw.events") == [(3,)]
    assert_batches_reconcile(settings)


def test_the_same_event_in_two_files_and_twice_in_one_is_stored_once(settings, landing):
    event = make_event("payment.succeeded")
    a = write_jsonl(landing / "a.jsonl", [event, event])
    b = write_jsonl(landing / "b.jsonl", [event, make_event()])
    summary = ingest_files(None, [a, b], settings)
    assert (summary.received, summary.accepted, summary.duplicates) == (4, 2, 2)
    assert summary.files == {str(a): 2, str(b): 2}
    assert query(
        settings, "SELECT count(*) FROM raw.events WHERE event_id = ?", [event["event_id"]]
    ) == [(1,)]


def test_events_out_of_order_keep_their_own_time_and_day(settings, landing):
    later = make_event(timestamp="2026-01-18T00:00:01Z")
    earlier = make_event(timestamp="2026-01-17T23:59:59-01:00")  # 2026-01-18T00:59:59Z
    oldest = make_event(timestamp="2026-01-01T10:00:00+09:00")  # 2026-01-01T01:00:00Z
    path = write_jsonl(landing / "ooo.jsonl", [later, earlier, oldest])
    assert ingest_files(None, [path], settings).accepted == 3
    rows = query(
        settings,
        "SELECT event_id, strftime(occurred_at, '%Y-%m-%dT%H:%M:%S'), event_date::VARCHAR FROM raw.events",
    )
    got = {r[0]: (r[1], r[2]) for r in rows}
    assert got[later["event_id"]] == ("2026-01-18T00:00:01", "2026-01-18")
    assert got[earlier["event_id"]] == ("2026-01-18T00:59:59", "2026-01-18")
    assert got[oldest["event_id"]] == ("2026-01-01T01:00:00", "2026-01-01")


def test_followed_file_leaves_a_truncated_last_line_for_later(settings, landing):
    first, second = make_event(), make_event("product.viewed")
    path = landing / "growing.jsonl"
    whole_second = line(second)
    path.write_bytes(line(first) + b"\n" + whole_second[:25])
    one = ingest_files(None, [path], settings, follow=True)
    assert (one.received, one.accepted, one.dead_lettered) == (1, 1, 0)
    assert query(settings, "SELECT offset_bytes, lines FROM ops.ingest_files") == [
        (len(line(first)) + 1, 1)
    ]
    # The writer completes the line and appends another.
    third = make_event("cart.abandoned")
    path.write_bytes(line(first) + b"\n" + whole_second + b"\n" + line(third) + b"\n")
    two = ingest_files(None, [path], settings, follow=True)
    assert (two.received, two.accepted, two.duplicates, two.dead_lettered) == (2, 2, 0, 0)
    three = ingest_files(None, [path], settings, follow=True)
    assert three.received == 0
    assert query(settings, "SELECT count(*) FROM raw.events") == [(3,)]
    assert query(settings, "SELECT count(*) FROM ops.dead_letter") == [(0,)]


def test_followed_positions_continue_the_line_numbers(settings, landing):
    path = landing / "grow.jsonl"
    path.write_bytes(line(make_event()) + b"\n")
    ingest_files(None, [path], settings, follow=True)
    with open(path, "ab") as out:
        out.write(b"oops\n")
    ingest_files(None, [path], settings, follow=True)
    assert [r[0] for r in dead_letters(settings)] == [f"{path}:2"]


def test_whole_file_read_processes_an_unterminated_last_line(settings, landing):
    path = write_jsonl(
        landing / "cut.jsonl", [make_event(), b'{"event_id": "trunc'], final_newline=False
    )
    summary = ingest_files(None, [path], settings)
    assert (summary.received, summary.accepted, summary.dead_lettered) == (2, 1, 1)
    assert summary.reasons == {"not_json": 1}


def test_a_replaced_shorter_file_is_read_again_from_the_start(settings, landing):
    path = write_jsonl(landing / "r.jsonl", [make_event(), make_event()])
    ingest_files(None, [path], settings, follow=True)
    path.write_bytes(line(make_event()) + b"\n")
    assert ingest_files(None, [path], settings, follow=True).accepted == 1


def test_contacts_are_tokenised_and_no_raw_pii_reaches_the_warehouse(settings, landing):
    created = make_event("contact.created")
    path = write_jsonl(landing / "c.jsonl", [created])
    ingest_files(None, [path], settings)
    [(email_tok, phone_tok, payload)] = query(
        settings, "SELECT email_token, phone_token, payload FROM raw.events"
    )
    assert email_tok == email_token(settings.pii_key, "jane.doe@example.com")
    assert phone_tok is not None
    assert json.loads(payload) == {
        "contact_id": "C-1",
        "lifecycle_stage": "subscriber",
        "status": "active",
        "email_token": email_tok,
        "phone_token": phone_tok,
    }
    settings_dump = settings.warehouse_path.read_bytes()
    assert b"Jane.Doe@Example.com" not in settings_dump and b"jane.doe" not in settings_dump.lower()


def test_contact_deleted_erases_pii_now_and_for_late_arrivals(settings, landing):
    created = make_event("contact.created")
    payment = make_event("payment.succeeded")
    deleted = make_event("contact.deleted", timestamp="2026-01-20T00:00:00Z")
    other = make_event(
        "contact.updated", payload={"contact_id": "C-2", "email": "keep@example.com"}
    )
    first = write_jsonl(landing / "1.jsonl", [created, payment, deleted, other])
    summary = ingest_files(None, [first], settings)
    assert summary.erasures == 1
    assert query(settings, "SELECT contact_id, erased_at::VARCHAR, event_id FROM ops.erasures") == [
        ("C-1", "2026-01-20 00:00:00", deleted["event_id"])
    ]
    # An update for the erased contact arriving later (with an older timestamp).
    late = make_event("contact.updated", timestamp="2026-01-19T00:00:00Z")
    ingest_files(None, [write_jsonl(landing / "2.jsonl", [late])], settings)
    rows = query(
        settings,
        "SELECT event_type, email_token, phone_token, payload, amount FROM raw.events WHERE contact_id = 'C-1' ORDER BY event_type",
    )
    for event_type, email_tok, phone_tok, payload, _ in rows:
        if event_type.startswith("contact."):
            assert (email_tok, phone_tok) == (None, None)
            assert json.loads(payload) == {"contact_id": "C-1", "erased": True}
    assert [r[4] for r in rows if r[0] == "payment.succeeded"] == [42.5]  # revenue is kept
    assert query(
        settings, "SELECT email_token IS NOT NULL FROM raw.events WHERE contact_id = 'C-2'"
    ) == [(True,)]


def test_run_ingest_returns_and_prints_the_summary(settings, landing):
    path = write_jsonl(landing / "cli.jsonl", [make_event(), b"bad"])
    result = run_ingest([path], settings)
    assert {k: result[k] for k in ("received", "accepted", "duplicates", "dead_lettered")} == {
        "received": 2,
        "accepted": 1,
        "duplicates": 0,
        "dead_lettered": 1,
    }
    printed: list[str] = []
    emit_summary(result, printed.append)
    assert json.loads(printed[-1])["batch_id"] == result["batch_id"]
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        run_ingest([landing / "nope.jsonl"], settings)


def test_a_callers_connection_is_used_as_it_is_and_left_open(settings, landing):
    import duckdb

    path = write_jsonl(landing / "own.jsonl", [make_event()])
    with duckdb.connect(str(settings.warehouse_path)) as con:
        con.execute("SET memory_limit = '3GB'")
        before = con.execute("SELECT current_setting('memory_limit')").fetchall()
        assert ingest_files(con, [path], settings).accepted == 1
        assert con.execute("SELECT current_setting('memory_limit')").fetchall() == before
        assert con.execute("SELECT count(*) FROM raw.events").fetchall() == [(1,)]


def test_a_failed_chunk_writes_nothing_and_leaves_the_counts_as_committed(settings):
    import pyarrow as pa

    from journey_pipeline.observe.ingest import IngestBatch, RawRecord, ingest_session

    def crash() -> None:
        raise RuntimeError("disk full")

    with ingest_session(None, settings) as con:
        batch = IngestBatch(con, settings, "file", "test")
        batch.add_records([RawRecord(line(make_event()), "file", "f:1")])
        with pytest.raises(RuntimeError):
            batch.ingest_chunk(
                pa.array([line(make_event()), b"bad"], pa.large_binary()),
                str,
                "file",
                before_commit=crash,
            )
        summary = batch.finish()
    assert (summary.received, summary.accepted, summary.dead_lettered) == (1, 1, 0)
    assert query(settings, "SELECT count(*) FROM raw.events") == [(1,)]
    assert query(settings, "SELECT count(*) FROM ops.dead_letter") == [(0,)]
    assert query(settings, "SELECT received FROM ops.ingest_batches") == [(1,)]
