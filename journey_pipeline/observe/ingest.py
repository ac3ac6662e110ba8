"""Ingestion: raw records (JSONL lines, Kafka messages) -> validated, tokenised, deduplicated
rows in ``raw.events``, with every rejected record in ``ops.dead_letter``.

One pipeline serves every source. Records are handed to DuckDB in chunks as an Arrow column
(records too large or not UTF-8 are set aside, Debezium envelopes mapped to canonical events);
one SQL statement (:mod:`journey_pipeline.observe.validation_sql`) validates, types and
tokenises the whole chunk, and the chunk is written in one transaction. The pydantic schema
(:mod:`journey_pipeline.observe.schema`) only sees the rejected records, to word their
dead-letter reason, so the bulk path runs at DuckDB speed:

- new events go to ``raw.events``; an ``event_id`` already there, or seen earlier in the
  chunk, counts as a duplicate (the first occurrence wins, later copies are not compared);
- rejected records go to ``ops.dead_letter`` with their bytes, position and reason (once per
  source, position and bytes: a redelivered record is counted again, not stored again); email
  addresses and phone values inside the stored bytes are replaced by ``[pii-redacted]`` so the
  dead-letter table does not become a copy of the CRM's personal data;
- ``contact.deleted`` events record an erasure (``ops.erasures``) and scrub that contact's
  ``contact.*`` rows: tokens set to NULL, payload reduced to ``{"contact_id", "erased"}``.
  Erasure is permanent: ``contact.*`` events for an erased contact that arrive later (even
  with an older timestamp) are stored scrubbed in the same transaction, so no token or
  payload field ever links them back to a person. Other event types carry no personal data
  and are kept, so revenue stays measurable;
- the batch's running counts are upserted into ``ops.ingest_batches`` and, for followed files,
  the byte offset consumed into ``ops.ingest_files``.

A batch is one call of :func:`ingest_files` / :func:`ingest_records`; its row always satisfies
``received = accepted + duplicates + dead_lettered`` at every commit. Blank lines are not
records and are not counted.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from journey_pipeline.observe.schema import (
    CONTACT_TYPES,
    MAX_RECORD_BYTES,
    RecordRejected,
    is_debezium,
    map_debezium,
    validate_record,
)
from journey_pipeline.observe.validation_sql import staging_sql
from journey_pipeline.settings import Settings
from journey_pipeline.warehouse import connect, ensure_core_schema

# Bytes of a file read per chunk. Larger chunks amortise the per-statement cost; 32 MiB keeps
# a chunk's Arrow buffers and DuckDB's working set far below the 1 GiB budget.
DEFAULT_CHUNK_BYTES = 32 << 20

INGEST_FILES_DDL = """
CREATE SCHEMA IF NOT EXISTS ops;
CREATE TABLE IF NOT EXISTS ops.ingest_files (
    path            VARCHAR PRIMARY KEY,     -- absolute path of the landing file
    offset_bytes    BIGINT NOT NULL,         -- bytes of complete lines consumed
    lines           BIGINT NOT NULL,         -- lines consumed (blank ones included)
    last_batch_id   VARCHAR NOT NULL,
    updated_at      TIMESTAMP NOT NULL
);
"""

_EVENT_COLUMNS = (
    "event_id, occurred_at, event_date, event_type, source, contact_id, lifecycle_stage, "
    "status, email_token, phone_token, amount, currency, order_id, decision_id, product_id, "
    "payload"
)
_CONTACT_TYPES_SQL = "(" + ", ".join(f"'{t}'" for t in CONTACT_TYPES) + ")"
_ERASED_PAYLOAD_SQL = "json_object('contact_id', contact_id, 'erased', true)"

# What to hide inside dead-lettered bytes: the values of email/phone keys, and anything else
# shaped like an email address.
_PII_VALUE_RE = re.compile(rb'("(?:email|phone)"\s*:\s*)"(?:[^"\\]|\\.)*"')
# Bounded by RFC 5321's lengths, and only tried around an "@", so a huge record stays linear.
_EMAIL_LOCAL_RE = re.compile(rb"[A-Za-z0-9._%+-]{1,64}$")
_EMAIL_DOMAIN_RE = re.compile(rb"[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){1,8}")
REDACTED = b"[pii-redacted]"


@dataclass(frozen=True)
class RawRecord:
    """One record as received: its bytes, the transport (``file``/``kafka``) and its position
    (``path:line`` or ``topic/partition/offset``)."""

    raw: bytes
    source: str
    position: str


@dataclass
class IngestSummary:
    """Counts of one ingestion batch. ``by_type`` counts accepted events per type and
    ``reasons`` dead letters per rule; ``files`` maps each file to the lines it contributed."""

    batch_id: str
    source: str
    received: int = 0
    accepted: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    erasures: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)

    def reconciles(self) -> bool:
        """Whether ``received == accepted + duplicates + dead_lettered``."""
        return self.received == self.accepted + self.duplicates + self.dead_lettered

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return {
            "batch_id": self.batch_id,
            "source": self.source,
            "received": self.received,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "dead_lettered": self.dead_lettered,
            "erasures": self.erasures,
            "by_type": dict(sorted(self.by_type.items())),
            "reasons": dict(sorted(self.reasons.items())),
            "files": dict(self.files),
        }


def redact_pii_bytes(raw: bytes) -> bytes:
    """``raw`` with email/phone values and email-shaped strings replaced by ``[pii-redacted]``."""
    redacted = _PII_VALUE_RE.sub(rb'\1"' + REDACTED + b'"', raw)
    pieces: list[bytes] = []
    done = 0  # bytes of ``redacted`` already copied to ``pieces``
    at = redacted.find(b"@")
    while at != -1:
        local = _EMAIL_LOCAL_RE.search(redacted, max(done, at - 64), at)
        domain = _EMAIL_DOMAIN_RE.match(redacted, at + 1)
        if local and domain:
            pieces += [redacted[done : local.start()], REDACTED]
            done = domain.end()
        at = redacted.find(b"@", max(at + 1, done))
    return b"".join([*pieces, redacted[done:]])


def ensure_observe_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the core tables (``warehouse.CORE_DDL``) and ``ops.ingest_files`` if missing."""
    ensure_core_schema(con)
    con.execute(INGEST_FILES_DDL)


def new_batch_id(source: str) -> str:
    """A unique, sortable batch id: ``<source>-<UTC time>-<random>``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{source}-{stamp}-{uuid.uuid4().hex[:8]}"


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class IngestBatch:
    """One ingestion batch over an open warehouse connection.

    Feed it chunks with :meth:`add_records` (or, for files, :meth:`ingest_chunk`); each chunk
    is one transaction that also upserts the batch's running counts into
    ``ops.ingest_batches``. Call :meth:`finish` at the end so that an empty batch is recorded
    too. ``summary`` holds the counts so far.
    """

    def __init__(
        self, con: duckdb.DuckDBPyConnection, settings: Settings, source: str, description: str
    ) -> None:
        self.con = con
        self.settings = settings
        self.description = description
        self.summary = IngestSummary(batch_id=new_batch_id(source), source=source)
        self.started_at = _utcnow()
        self.staging_sql = staging_sql("incoming_records", settings.pii_key)
        self._last_chunk_time: datetime | None = None

    def _chunk_time(self) -> datetime:
        """The chunk's ``ingested_at``: now, strictly after the previous chunk's."""
        now = _utcnow()
        if self._last_chunk_time is not None and now <= self._last_chunk_time:
            now = self._last_chunk_time + timedelta(microseconds=1)
        self._last_chunk_time = now
        return now

    def add_records(self, records: Sequence[RawRecord]) -> None:
        """Validate and write ``records`` (one transaction; a no-op when empty)."""
        if not records:
            return
        raw = pa.array([r.raw for r in records], pa.large_binary())
        self.ingest_chunk(raw, lambda i: records[i].position, records[0].source)

    def finish(self) -> IngestSummary:
        """Record the batch row (also when nothing was received) and return the summary."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            self.record_row()
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        return self.summary

    def record_row(self) -> None:
        """Upsert the batch's running counts into ``ops.ingest_batches`` (inside a transaction)."""
        s = self.summary
        self.con.execute(
            """
            INSERT INTO ops.ingest_batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (batch_id) DO UPDATE SET
                received = excluded.received, accepted = excluded.accepted,
                duplicates = excluded.duplicates, dead_lettered = excluded.dead_lettered,
                finished_at = excluded.finished_at
            """,
            [
                s.batch_id,
                s.source,
                self.description,
                s.received,
                s.accepted,
                s.duplicates,
                s.dead_lettered,
                self.started_at,
                _utcnow(),
            ],
        )

    def ingest_chunk(
        self,
        raw: pa.Array,
        position_of: Callable[[int], str],
        transport: str,
        before_commit: Callable[[], None] | None = None,
        newline_terminated: bool = False,
    ) -> None:
        """Validate and write one chunk of records in one transaction.

        ``raw`` is a (large) binary Arrow array; ``position_of(i)`` names record ``i``;
        ``before_commit`` runs inside the transaction (file offsets are saved there);
        ``newline_terminated`` says each value still ends with its line's ``\\n``.
        """
        con = self.con
        s = self.summary
        # Counts as they were, in case the transaction rolls back.
        committed = replace(
            s, by_type=dict(s.by_type), reasons=dict(s.reasons), files=dict(s.files)
        )
        lines, unreadable = _prepare_lines(raw, slack=int(newline_terminated))
        incoming = pa.table({"seq": pa.array(np.arange(len(raw), dtype=np.int64)), "line": lines})
        con.register("incoming_records", incoming)
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(f"CREATE OR REPLACE TEMP TABLE staged_records AS {self.staging_sql}")
            received, valid = con.execute(
                "SELECT count(*), count(*) FILTER (reason_key IS NULL) FROM staged_records"
            ).fetchall()[0]
            received += len(unreadable)
            now = self._chunk_time()
            # Straight from staging into the table: the first copy of each new event_id.
            con.execute(
                f"""
                INSERT INTO raw.events
                SELECT {_EVENT_COLUMNS}, ? AS batch_id, ? AS ingested_at
                FROM (
                    SELECT * EXCLUDE (source), coalesce(source, ?) AS source
                    FROM staged_records
                    WHERE reason_key IS NULL
                    QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY seq) = 1
                ) AS first_copies
                ANTI JOIN raw.events USING (event_id)
                """,
                [s.batch_id, now, transport],
            )
            # This chunk's rows are those with its (batch_id, ingested_at).
            con.execute(
                "CREATE OR REPLACE TEMP TABLE new_events AS "
                "SELECT event_id, event_type, contact_id, occurred_at FROM raw.events "
                "WHERE ingested_at = ? AND batch_id = ?",
                [now, s.batch_id],
            )
            by_type = con.execute(
                "SELECT event_type, count(*) FROM new_events GROUP BY ALL"
            ).fetchall()
            erased = self._apply_erasures()
            rejected = con.execute(
                "SELECT seq, reason_key FROM staged_records WHERE reason_key IS NOT NULL"
            ).fetchall()
            rejected = sorted(rejected + list(unreadable.items()))
            self._dead_letter(rejected, raw, position_of, transport, now)
            if before_commit is not None:
                before_commit()
            accepted = sum(n for _, n in by_type)
            s.received += received
            s.accepted += accepted
            s.duplicates += valid - accepted
            s.dead_lettered += len(rejected)
            s.erasures += erased
            for event_type, n in by_type:
                s.by_type[event_type] = s.by_type.get(event_type, 0) + n
            self.record_row()
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            self.summary = committed
            raise
        finally:
            con.unregister("incoming_records")
            # Free the chunk's working tables now rather than when the next chunk replaces them.
            con.execute("DROP TABLE IF EXISTS staged_records; DROP TABLE IF EXISTS new_events")

    def _apply_erasures(self) -> int:
        """Record this chunk's erasures and scrub the affected contacts' contact.* rows."""
        con = self.con
        before = con.execute("SELECT count(*) FROM ops.erasures").fetchall()[0][0]
        con.execute(
            """
            INSERT INTO ops.erasures
            SELECT contact_id, min(occurred_at), arg_min(event_id, occurred_at)
            FROM new_events WHERE event_type = 'contact.deleted'
            GROUP BY contact_id
            ON CONFLICT (contact_id) DO NOTHING
            """
        )
        erased = con.execute("SELECT count(*) FROM ops.erasures").fetchall()[0][0] - before
        con.execute(
            f"""
            UPDATE raw.events SET email_token = NULL, phone_token = NULL,
                                  payload = {_ERASED_PAYLOAD_SQL}
            WHERE event_type IN {_CONTACT_TYPES_SQL}
              AND contact_id IN (
                  SELECT contact_id FROM ops.erasures
                  WHERE contact_id IN (SELECT contact_id FROM new_events
                                       WHERE event_type IN {_CONTACT_TYPES_SQL}))
              AND payload IS DISTINCT FROM {_ERASED_PAYLOAD_SQL}
            """
        )
        return erased

    def _dead_letter(
        self,
        rejected: Sequence[tuple[int, str]],
        raw: pa.Array,
        position_of: Callable[[int], str],
        transport: str,
        now: datetime,
    ) -> None:
        if not rejected:
            return
        rows = {"position": [], "raw": [], "reason": []}
        for seq, key in rejected:
            record = raw[seq].as_py()
            if record.endswith(b"\n"):
                record = record[:-1]
            rows["position"].append(position_of(seq))
            rows["raw"].append(redact_pii_bytes(record))
            rows["reason"].append(_explain(record, key))
            self.summary.reasons[key] = self.summary.reasons.get(key, 0) + 1
        letters = pa.table(
            {
                "position": pa.array(rows["position"], pa.string()),
                "raw": pa.array(rows["raw"], pa.large_binary()),
                "reason": pa.array(rows["reason"], pa.string()),
            }
        )
        self.con.register("dead_letters", letters)
        try:
            # A record delivered again (a re-run file, a redelivered message) is counted
            # in this batch but its dead letter is not stored twice.
            self.con.execute(
                "INSERT INTO ops.dead_letter SELECT ?, ?, position, raw, reason, ? "
                "FROM dead_letters AS d WHERE NOT EXISTS (SELECT 1 FROM ops.dead_letter AS o "
                "WHERE o.source = ? AND o.position = d.position AND o.raw = d.raw)",
                [self.summary.batch_id, transport, now, transport],
            )
        finally:
            self.con.unregister("dead_letters")


def _records_containing(raw: pa.Array, offsets: np.ndarray, needle: bytes) -> list[int]:
    """Indices of the records whose bytes contain ``needle`` (one memchr-speed scan)."""
    data = raw.buffers()[2].to_pybytes()
    hits: list[int] = []
    position = data.find(needle, int(offsets[0]))
    while position != -1 and position < offsets[-1]:
        index = int(np.searchsorted(offsets, position, side="right")) - 1
        hits.append(index)
        position = data.find(needle, int(offsets[index + 1]))
    return hits


def _prepare_lines(raw: pa.Array, slack: int = 0) -> tuple[pa.Array, dict[int, str]]:
    """The records as a UTF-8 string array ready for the SQL stage, and those it must not see.

    - over ``MAX_RECORD_BYTES`` (``too_large``) or not valid UTF-8 (``not_utf8``): replaced by
      an empty string, which the SQL stage skips as blank; the caller dead-letters them from
      the returned dict (index -> reason key);
    - Debezium envelopes: replaced by the canonical event they map to
      (:func:`~journey_pipeline.observe.schema.map_debezium`), or set aside with the mapping's
      reason. Only records containing ``"op"`` are looked at, so canonical events pay nothing.

    The common case is one vectorised, validating cast.
    """
    unreadable: dict[int, str] = {}
    offsets = np.frombuffer(raw.buffers()[1], dtype=np.int64)[
        raw.offset : raw.offset + len(raw) + 1
    ]
    for index in np.flatnonzero(np.diff(offsets) > MAX_RECORD_BYTES + slack):
        unreadable[int(index)] = "too_large"
    try:
        text = raw.cast(pa.large_string())
    except pa.ArrowInvalid:
        # Rare: find the invalid records one by one and blank them before casting.
        # (``slack`` bytes are a record's line terminator, not part of it.)
        values = raw.to_pylist()
        for index, value in enumerate(values):
            if index in unreadable:
                continue
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                unreadable[index] = "not_utf8"
        text = pa.array(
            [b"" if i in unreadable else v for i, v in enumerate(values)], pa.large_binary()
        ).cast(pa.large_string())
    replacements: dict[int, str] = {}
    for index in _records_containing(raw, offsets, b'"op"'):
        if index in unreadable:
            continue
        try:
            obj = json.loads(text[index].as_py())
        except ValueError:
            continue  # the SQL stage rejects it as not JSON
        if not isinstance(obj, dict) or not is_debezium(obj):
            continue
        try:
            replacements[index] = json.dumps(map_debezium(obj), ensure_ascii=False)
        except RecordRejected as rejection:
            unreadable[index] = rejection.key
    replacements.update(dict.fromkeys(unreadable, ""))
    if replacements:
        mask = np.zeros(len(raw), dtype=bool)
        mask[list(replacements)] = True
        text = pc.replace_with_mask(
            text,
            pa.array(mask),
            pa.array([replacements[i] for i in sorted(replacements)], pa.large_string()),
        )
    return text, unreadable


def _explain(record: bytes, key: str) -> str:
    """The dead-letter reason: the rule's key, with the schema's explanation when it agrees."""
    try:
        validate_record(record)
    except RecordRejected as rejection:
        if rejection.key == key:
            return rejection.reason
    return key


@dataclass
class FileChunk:
    """Complete lines read from a file, and how far the file is consumed after them."""

    raw: pa.Array  # large_binary, one value per line, each still ending with its newline
    first_line: int  # 1-based line number of raw[0]
    end_offset: int  # byte offset after the last complete line in this chunk
    end_line: int  # lines consumed up to end_offset


def read_line_chunks(
    path: Path,
    *,
    start_offset: int = 0,
    start_line: int = 0,
    follow: bool = False,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[FileChunk]:
    """Split a JSONL file into chunks of lines without decoding them (bytes stay as received).

    Reading starts at ``start_offset`` (the byte after line ``start_line``). A last line with
    no newline is yielded when ``follow`` is false and left for the next call when it is true
    (the writer may still be appending to it). Each value keeps its line's ``\\n`` (a
    synthetic one for an unterminated last line); the Arrow array shares the buffer read from
    the file, so there is no per-line Python object.
    """
    with open(path, "rb") as handle:
        handle.seek(start_offset)
        offset, line_no = start_offset, start_line
        carry = b""
        while True:
            data = handle.read(chunk_bytes)
            at_end = not data
            buffer = carry + data if carry else data
            carry = b""
            newlines = np.flatnonzero(np.frombuffer(buffer, dtype=np.uint8) == 10)
            unterminated = bool(buffer) and (not newlines.size or newlines[-1] != len(buffer) - 1)
            if not at_end:
                if not newlines.size:
                    carry = buffer  # a line longer than a chunk: keep reading
                    continue
                carry = buffer[newlines[-1] + 1 :]
                buffer = buffer[: newlines[-1] + 1]
            elif unterminated and not follow:
                # An unterminated last line is a record like any other.
                buffer += b"\n"
                newlines = np.append(newlines, len(buffer) - 1)
            elif unterminated:
                # Followed file: the writer may still be appending to the last line, so it is
                # neither counted nor dead-lettered until its newline arrives.
                buffer = buffer[: newlines[-1] + 1] if newlines.size else b""
            if newlines.size:
                # The synthetic newline is not in the file: the saved offset stops before the
                # unterminated line, so a later followed read would see that line whole.
                synthetic = int(at_end and unterminated and not follow)
                terminated = len(newlines) - synthetic
                terminated_bytes = int(newlines[terminated - 1]) + 1 if terminated else 0
                yield FileChunk(
                    raw=_lines_array(buffer, newlines),
                    first_line=line_no + 1,
                    end_offset=offset + terminated_bytes,
                    end_line=line_no + terminated,
                )
                offset += terminated_bytes
                line_no += terminated
            if at_end:
                return


def _lines_array(complete: bytes, newlines: np.ndarray) -> pa.Array:
    """The lines of ``complete`` (which ends with a newline) as a large_binary array.

    Built over the file buffer without copying; since Arrow offsets are contiguous, each value
    keeps its ``\\n``, which JSON treats as whitespace and dead letters drop.
    """
    offsets = np.concatenate(([0], newlines.astype(np.int64) + 1))
    return pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(newlines), [None, pa.py_buffer(offsets), pa.py_buffer(complete)]
    )


# DuckDB's own memory budget while ingesting (its default is 80% of RAM): with the chunk size
# above this keeps the whole process under 1 GiB at any input size.
INGEST_MEMORY_LIMIT = "512MB"


@contextlib.contextmanager
def ingest_session(
    con_or_path: duckdb.DuckDBPyConnection | str | Path | None, settings: Settings
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A warehouse connection for one ingestion, with the core tables in place.

    A connection opened here has DuckDB's memory capped at :data:`INGEST_MEMORY_LIMIT` and is
    closed at the end; a caller's connection is used as it is (its settings are the caller's).
    """
    con, owned = open_warehouse(con_or_path, settings)
    try:
        if owned:
            con.execute(f"SET memory_limit = '{INGEST_MEMORY_LIMIT}'")
        ensure_observe_schema(con)
        yield con
    finally:
        if owned:
            con.close()


def open_warehouse(
    con_or_path: duckdb.DuckDBPyConnection | str | Path | None, settings: Settings
) -> tuple[duckdb.DuckDBPyConnection, bool]:
    """A connection for ``con_or_path`` (a connection, a path, or ``None`` for the settings'
    warehouse) and whether it was opened here, so the caller must close it."""
    if isinstance(con_or_path, duckdb.DuckDBPyConnection):
        return con_or_path, False
    return connect(con_or_path or settings.warehouse_path), True


def ingest_records(
    records: Iterable[RawRecord],
    settings: Settings,
    con_or_path: duckdb.DuckDBPyConnection | str | Path | None = None,
    *,
    source: str | None = None,
    description: str = "",
    chunk_records: int = 100_000,
    after_commit: Callable[[list[RawRecord]], None] | None = None,
) -> IngestSummary:
    """Ingest raw records (e.g. Kafka messages) as one batch and return its summary.

    ``con_or_path`` is an open DuckDB connection, a warehouse path, or ``None`` for
    ``settings.warehouse_path``. Records are written ``chunk_records`` at a time, each chunk in
    one transaction; ``after_commit(chunk)`` is called once a chunk is durable (the Kafka
    source commits its offsets there). ``source`` names the batch's transport (default: the
    first record's). Records whose bytes are empty or blank are skipped, not counted.
    """
    with ingest_session(con_or_path, settings) as con:
        iterator = iter(records)
        pending = _take(iterator, chunk_records)
        transport = source or (pending[0].source if pending else "records")
        batch = IngestBatch(con, settings, transport, description)
        while pending:
            batch.add_records(pending)
            if after_commit is not None:
                after_commit(pending)
            pending = _take(iterator, chunk_records)
        return batch.finish()


def _take(iterator: Iterator[RawRecord], n: int) -> list[RawRecord]:
    chunk: list[RawRecord] = []
    for record in iterator:
        chunk.append(record)
        if len(chunk) >= n:
            break
    return chunk


def ingest_files(
    con_or_path: duckdb.DuckDBPyConnection | str | Path | None,
    paths: Iterable[str | Path],
    settings: Settings,
    *,
    follow: bool = False,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> IngestSummary:
    """Ingest JSONL files as one batch (transport ``file``) and return its summary.

    ``follow=False`` (the command line) reads each file whole, including an unterminated last
    line. ``follow=True`` (the sensor, for files still being written) starts where the last
    call stopped (``ops.ingest_files``) and leaves an unterminated last line for later. In
    both modes the offset saved is that of the last complete line consumed, in the same
    transaction as the rows it produced; a file now shorter than its saved offset was
    replaced and is read again from the start (deduplication absorbs repeats).
    """
    with ingest_session(con_or_path, settings) as con:
        paths = [Path(p).absolute() for p in paths]
        batch = IngestBatch(con, settings, "file", ", ".join(p.name for p in paths)[:1000])
        for path in paths:
            start_offset, start_line = 0, 0
            saved = con.execute(
                "SELECT offset_bytes, lines FROM ops.ingest_files WHERE path = ?", [str(path)]
            ).fetchall()
            saved = saved[0] if saved else None
            if follow and saved is not None and saved[0] <= path.stat().st_size:
                start_offset, start_line = saved
            before = batch.summary.received
            for chunk in read_line_chunks(
                path,
                start_offset=start_offset,
                start_line=start_line,
                follow=follow,
                chunk_bytes=chunk_bytes,
            ):
                batch.ingest_chunk(
                    chunk.raw,
                    lambda i, first=chunk.first_line, p=path: f"{p}:{first + i}",
                    "file",
                    newline_terminated=True,
                    before_commit=lambda c=chunk, p=path: _save_offset(
                        con, p, c.end_offset, c.end_line, batch.summary.batch_id, follow
                    ),
                )
            batch.summary.files[str(path)] = batch.summary.received - before
        return batch.finish()


def _save_offset(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    offset: int,
    lines: int,
    batch_id: str,
    follow: bool,
) -> None:
    """Remember how far ``path`` is consumed. A whole-file read never moves a followed
    file's offset backwards (it may have read from the start while a sensor is further on)."""
    keep_max = "" if follow else "WHERE excluded.offset_bytes >= ops.ingest_files.offset_bytes"
    con.execute(
        f"""
        INSERT INTO ops.ingest_files VALUES (?, ?, ?, ?, ?)
        ON CONFLICT (path) DO UPDATE SET offset_bytes = excluded.offset_bytes,
            lines = excluded.lines, last_batch_id = excluded.last_batch_id,
            updated_at = excluded.updated_at
        {keep_max}
        """,
        [str(path), offset, lines, batch_id, _utcnow()],
    )
