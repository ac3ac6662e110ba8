"""The CRM outbox: every live decision is written to the CRM exactly once.

A row per decision (``crm_outbox``, keyed by decision_id) moves
``pending -> sent -> confirmed``, or to ``dead`` with a row in ``act_dead_letter`` saying why.

Exactly-once effect comes from three rules:

1. Claiming is an atomic conditional UPDATE that stamps a lease (token + expiry) on rows that
   are due and not leased by anyone else, so two overlapping dispatchers never both send a row.
2. A row is marked ``sent`` (committed) *before* the CRM is called, and the CRM is called with
   the decision_id as idempotency key. If the dispatcher dies anywhere after that, the row
   stays ``sent`` with a lease that expires; the next dispatcher re-sends it with the same key
   and the CRM answers with the task it already has instead of creating a second one.
3. The result (external id) is recorded and the row confirmed in one statement.

The store is any SQLAlchemy database: SQLite (WAL, busy timeout, ``BEGIN IMMEDIATE`` so
writers from several processes queue instead of failing) locally, PostgreSQL in production.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

from journey_pipeline.act.crm import (
    BODY_EXCERPT_CHARS,
    CrmAdapter,
    PermanentCrmError,
    RetryableCrmError,
    json_default,
)
from journey_pipeline.actions import ACTIONS, DEFAULT_ACTION
from journey_pipeline.settings import Settings

STATUSES = ("pending", "sent", "confirmed", "dead")
# Points in the dispatch of one row where ``on_step`` is called (in this order).
DISPATCH_STEPS = ("claimed", "marked_sent", "crm_answered", "recorded")
# Decision-log columns stored as JSON text in DuckDB; the payload carries them parsed.
_JSON_FIELDS = ("expected_rewards", "explanation", "rules_applied")

Clock = Callable[[], datetime]
Sleep = Callable[[float], None]
StepObserver = Callable[[str, str], None]


def utc_now() -> datetime:
    """The current time, timezone-aware UTC (the default outbox clock)."""
    return datetime.now(UTC)


def _as_db_time(value: datetime) -> datetime:
    """Naive UTC: stored the same way in SQLite (text) and PostgreSQL (timestamp)."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


@dataclass(frozen=True)
class RetryPolicy:
    """When to try a failed CRM write again.

    Exponential backoff with full jitter: the n-th retry waits a uniform random time in
    ``[0, min(max_delay_s, base_delay_s * 2**(n-1))]``, so many rows failing together do not
    come back together; a CRM's ``Retry-After`` is a floor on that wait. After
    ``max_attempts`` CRM calls the row is dead-lettered."""

    max_attempts: int = 8
    base_delay_s: float = 2.0
    max_delay_s: float = 900.0

    def delay(self, attempts: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait after the ``attempts``-th failed call (``attempts`` >= 1)."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** max(0, attempts - 1))
        jittered = rng.uniform(0.0, ceiling)
        if retry_after is not None and math.isfinite(retry_after):
            return max(float(retry_after), jittered)
        return jittered


@dataclass
class DispatchSummary:
    """What one :meth:`Outbox.dispatch` call did.

    ``sent``: CRM calls made; ``confirmed``: rows confirmed; ``retried``: rows rescheduled
    after a retryable failure; ``dead``: rows dead-lettered; ``skipped``: due rows another
    dispatcher claimed first (or took over) so this one left them alone."""

    sent: int = 0
    confirmed: int = 0
    retried: int = 0
    dead: int = 0
    skipped: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counts as a plain dict (for logs and asset metadata)."""
        return asdict(self)


def decision_payload(decision: Mapping[str, Any]) -> dict[str, Any]:
    """A decision-log row as plain JSON values: timestamps as ISO strings, NaN/NaT as null,
    and the JSON text columns (expected_rewards, explanation, rules_applied) parsed."""
    payload: dict[str, Any] = {}
    for key, value in decision.items():
        if key in _JSON_FIELDS and isinstance(value, str):
            # Unparseable text is kept as text: the CRM still gets what the log holds.
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        payload[str(key)] = value
    text = json.dumps(payload, default=_payload_default, allow_nan=True)
    return _drop_nan(json.loads(text))


def _payload_default(value: Any) -> Any:
    # pandas NaT (and other null markers) become null rather than a crash.
    if value is None or str(value) in ("NaT", "<NA>"):
        return None
    if hasattr(value, "isoformat") and hasattr(value, "tzinfo"):
        return value.isoformat()
    return json_default(value)


def _drop_nan(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _drop_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_drop_nan(v) for v in value]
    return value


def outbox_url_from_settings(settings: Settings) -> str:
    """The outbox database URL: ``JOURNEY_OUTBOX_URL`` if given, the PostgreSQL DSN under the
    production profile, else ``sqlite:///{JOURNEY_HOME}/outbox.db``."""
    explicit = settings.outbox_url
    if explicit:
        return str(explicit)
    if settings.is_production and settings.postgres_dsn:
        dsn = settings.postgres_dsn
        if dsn.startswith("postgres://"):
            dsn = "postgresql://" + dsn[len("postgres://") :]
        return dsn
    return f"sqlite:///{settings.home}/outbox.db"


def _make_engine(url: str, busy_timeout_ms: int) -> sa.Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": busy_timeout_ms / 1000})

    @sa.event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, issue BEGIN, so it can be BEGIN IMMEDIATE below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin_immediate(conn: sa.Connection) -> None:
        # Take the write lock at BEGIN: a deferred transaction that reads and then writes can
        # fail at once with SQLITE_BUSY when another process wrote in between; IMMEDIATE waits.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class Outbox:
    """The transactional outbox between the decision log and the CRM.

    ``url``: SQLAlchemy URL of the store. ``table_prefix`` is prepended to both table names
    (``crm_outbox``, ``act_dead_letter``) so several outboxes can share a database.
    ``lease_seconds`` is how long a claim protects a row; it must exceed the longest CRM call,
    and it is how long a crashed dispatcher's rows wait before another one resumes them."""

    def __init__(
        self,
        url: str,
        *,
        table_prefix: str = "",
        lease_seconds: float = 300.0,
        retry_policy: RetryPolicy | None = None,
        busy_timeout_ms: int = 30_000,
        create: bool = True,
    ) -> None:
        self.url = url
        self.lease = timedelta(seconds=lease_seconds)
        self.retry_policy = retry_policy or RetryPolicy()
        self.engine = _make_engine(url, busy_timeout_ms)
        self.metadata = sa.MetaData()
        self.outbox = sa.Table(
            f"{table_prefix}crm_outbox",
            self.metadata,
            sa.Column("decision_id", sa.String(128), primary_key=True),
            sa.Column("contact_id", sa.String(128)),
            sa.Column("action", sa.String(64), nullable=False),
            sa.Column("payload", sa.JSON, nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("attempts", sa.Integer, nullable=False, default=0),
            sa.Column("external_id", sa.String(128)),
            sa.Column("last_error", sa.Text),
            sa.Column("next_attempt_at", sa.DateTime, nullable=False),
            sa.Column("lease_token", sa.String(36)),
            sa.Column("lease_expires_at", sa.DateTime),
            sa.Column("created_at", sa.DateTime, nullable=False),
            sa.Column("updated_at", sa.DateTime, nullable=False),
            sa.CheckConstraint(
                "status IN ('pending', 'sent', 'confirmed', 'dead')",
                name=f"{table_prefix}crm_outbox_status",
            ),
            sa.Index(f"{table_prefix}crm_outbox_due", "status", "next_attempt_at"),
        )
        self.dead_letter = sa.Table(
            f"{table_prefix}act_dead_letter",
            self.metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("decision_id", sa.String(128), nullable=False, index=True),
            sa.Column("status_code", sa.Integer),
            sa.Column("body_excerpt", sa.Text),
            sa.Column("reason", sa.Text, nullable=False),
            sa.Column("attempts", sa.Integer, nullable=False),
            sa.Column("dead_lettered_at", sa.DateTime, nullable=False),
        )
        # The two statements run for every row, built once: building and cache-keying a
        # statement costs more CPU than executing it on SQLite.
        t = self.outbox.c
        self._mark_sent_stmt = (
            self.outbox.update()
            .where(
                t.decision_id == sa.bindparam("b_id"),
                t.lease_token == sa.bindparam("b_token"),
                t.status.in_(("pending", "sent")),
            )
            .values(
                status="sent", attempts=sa.bindparam("b_attempts"), updated_at=sa.bindparam("b_now")
            )
        )
        self._confirm_stmt = (
            self.outbox.update()
            # Not conditioned on the lease: with the same idempotency key every dispatcher
            # gets the same external id, so whoever records first is right.
            .where(t.decision_id == sa.bindparam("b_id"), t.status == "sent")
            .values(
                status="confirmed",
                external_id=sa.bindparam("b_external_id"),
                last_error=None,
                lease_token=None,
                lease_expires_at=None,
                updated_at=sa.bindparam("b_now"),
            )
        )
        if create:
            self.create_tables()

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> Outbox:
        """The outbox at :func:`outbox_url_from_settings` (keyword arguments as for ``__init__``)."""
        return cls(outbox_url_from_settings(settings), **kwargs)

    def create_tables(self) -> None:
        """Create the outbox and dead-letter tables if they do not exist."""
        self.metadata.create_all(self.engine)

    def drop_tables(self) -> None:
        """Drop both tables (for throw-away outboxes in tests and benchmarks)."""
        self.metadata.drop_all(self.engine)

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()

    # -- enqueue ----------------------------------------------------------------------------

    def enqueue(
        self, decisions: Iterable[Mapping[str, Any]] | Any, *, clock: Clock = utc_now
    ) -> int:
        """Add the CRM-bound decisions among ``decisions`` (decision-log rows, as mappings or a
        DataFrame); return how many were new.

        Only live decisions whose action is not ``no_offer`` become CRM tasks; the rest are
        ignored. Idempotent: a decision_id already in the outbox is left as it is. A row
        without a decision_id is a ``ValueError`` (it cannot be keyed); a row without a
        contact or with an unknown action enters as ``dead`` with a dead-letter reason, so it
        is visible rather than silently dropped."""
        if hasattr(decisions, "to_dict") and hasattr(decisions, "columns"):
            decisions = decisions.to_dict(orient="records")
        now = _as_db_time(clock())
        rows: list[dict[str, Any]] = []
        invalid: dict[str, str] = {}
        seen: set[str] = set()
        for position, decision in enumerate(decisions):
            if (decision.get("mode") or "live") != "live":
                continue
            action = decision.get("action")
            if action == DEFAULT_ACTION:
                continue
            decision_id = decision.get("decision_id")
            if not decision_id or not isinstance(decision_id, str):
                raise ValueError(f"decision #{position} has no decision_id: {dict(decision)!r}")
            if decision_id in seen:
                continue
            seen.add(decision_id)
            contact_id = decision.get("contact_id")
            if action not in ACTIONS:
                invalid[decision_id] = f"unknown action {action!r}; known: {', '.join(ACTIONS)}"
            elif not contact_id or not isinstance(contact_id, str):
                invalid[decision_id] = "decision has no contact_id"
            rows.append(
                {
                    "decision_id": decision_id,
                    "contact_id": contact_id if isinstance(contact_id, str) else None,
                    "action": str(action),
                    "payload": decision_payload(decision),
                    "status": "dead" if decision_id in invalid else "pending",
                    "attempts": 0,
                    "last_error": invalid.get(decision_id),
                    "next_attempt_at": now,
                    "created_at": now,
                    "updated_at": now,
                }
            )
        if not rows:
            return 0
        with self.engine.begin() as conn:
            inserted = self._insert_new(conn, rows)
            dead_on_arrival = [d for d in inserted if d in invalid]
            if dead_on_arrival:
                conn.execute(
                    self.dead_letter.insert(),
                    [
                        {
                            "decision_id": d,
                            "status_code": None,
                            "body_excerpt": None,
                            "reason": invalid[d],
                            "attempts": 0,
                            "dead_lettered_at": now,
                        }
                        for d in dead_on_arrival
                    ],
                )
        return len(inserted)

    def _insert_new(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> list[str]:
        """Insert rows whose decision_id is new; return the ids actually inserted."""
        dialect = conn.dialect.name
        if dialect in ("sqlite", "postgresql"):
            insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
            stmt = (
                insert(self.outbox)
                .on_conflict_do_nothing(index_elements=["decision_id"])
                .returning(self.outbox.c.decision_id)
            )
            inserted: list[str] = []
            # Chunked so very large batches stay under the drivers' parameter limits.
            for start in range(0, len(rows), 500):
                result = conn.execute(stmt, rows[start : start + 500])
                inserted.extend(result.scalars().all())
            return inserted
        existing = set(
            conn.execute(
                sa.select(self.outbox.c.decision_id).where(
                    self.outbox.c.decision_id.in_([r["decision_id"] for r in rows])
                )
            ).scalars()
        )
        fresh = [r for r in rows if r["decision_id"] not in existing]
        if fresh:
            conn.execute(self.outbox.insert(), fresh)
        return [r["decision_id"] for r in fresh]

    # -- dispatch ---------------------------------------------------------------------------

    def dispatch(
        self,
        adapter: CrmAdapter,
        *,
        max_batch: int = 100,
        clock: Clock = utc_now,
        sleep: Sleep = time.sleep,
        max_wait_s: float = 30.0,
        rng: random.Random | None = None,
        on_step: StepObserver | None = None,
    ) -> DispatchSummary:
        """Send every due row to ``adapter`` and record the outcome; return the counts.

        Rows are claimed ``max_batch`` at a time until none is due. Rows whose retry falls
        due within ``max_wait_s`` of the start are waited for (``sleep``) and retried in the
        same call; later ones are left for the next call. ``clock`` and ``sleep`` are
        injectable so backoff can be tested without waiting; ``rng`` drives the jitter.
        ``on_step(step, decision_id)`` is called at each of :data:`DISPATCH_STEPS`.
        A failing row never stops the others: its error is classified and recorded."""
        rng = rng or random.Random()
        summary = DispatchSummary()
        deadline = _as_db_time(clock()) + timedelta(seconds=max_wait_s)
        while True:
            now = _as_db_time(clock())
            token = str(uuid.uuid4())
            claimed, skipped = self._claim(token, now, max_batch)
            summary.skipped += skipped
            try:
                for row in claimed:
                    self._dispatch_row(row, token, adapter, summary, clock, rng, on_step)
            except sa.exc.DBAPIError:
                # The store failed under us (a database restart, a dropped connection). Hand
                # the batch back so the next dispatcher need not wait for the lease to expire.
                self._release(token, clock, sleep)
                raise
            if claimed:
                continue
            if skipped:
                # Others hold those rows now; they are not ours to wait for.
                break
            next_due = self._next_claimable_at()
            now = _as_db_time(clock())
            if next_due is None or next_due > deadline or next_due <= now:
                break
            sleep((next_due - now).total_seconds())
        return summary

    def _release(
        self, token: str, clock: Clock, sleep: Sleep, attempts: int = 10, wait_s: float = 0.5
    ) -> bool:
        """Make every row still leased to ``token`` claimable again at once; returns whether
        that was recorded.

        Called when the store failed mid-batch. A row already marked ``sent`` may or may not
        have reached the CRM: it becomes due again and is re-sent with the same idempotency
        key, so the CRM returns the task it has. The store may still be coming back, so the
        release is tried ``attempts`` times ``wait_s`` apart; if it never succeeds the leases
        simply expire after ``lease_seconds``.
        """
        t = self.outbox.c
        for attempt in range(attempts):
            try:
                with self.engine.begin() as conn:
                    conn.execute(
                        self.outbox.update()
                        .where(t.lease_token == token, t.status.in_(("pending", "sent")))
                        .values(lease_token=None, lease_expires_at=_as_db_time(clock()))
                    )
                return True
            except sa.exc.DBAPIError:
                if attempt + 1 < attempts:
                    sleep(wait_s)
        return False

    def _due(self, now: datetime) -> sa.ColumnElement[bool]:
        t = self.outbox.c
        lease_free = sa.or_(t.lease_expires_at.is_(None), t.lease_expires_at <= now)
        return sa.or_(
            sa.and_(t.status == "pending", t.next_attempt_at <= now, lease_free),
            # A 'sent' row whose lease ran out: its dispatcher died between marking it sent
            # and recording the answer. Re-sending is safe with the same idempotency key.
            sa.and_(t.status == "sent", t.lease_expires_at <= now),
        )

    def _claim(self, token: str, now: datetime, limit: int) -> tuple[list[dict[str, Any]], int]:
        """Lease up to ``limit`` due rows to ``token``; return them and how many due rows
        another dispatcher took between our look and our claim."""
        t = self.outbox.c
        with self.engine.begin() as conn:
            candidates = (
                conn.execute(
                    sa.select(t.decision_id)
                    .where(self._due(now))
                    .order_by(t.next_attempt_at, t.created_at, t.decision_id)
                    .limit(limit)
                )
                .scalars()
                .all()
            )
            if not candidates:
                return [], 0
            # The atomic conditional UPDATE: a row leased by someone else since the SELECT
            # no longer matches ``_due`` and is left alone.
            conn.execute(
                self.outbox.update()
                .where(t.decision_id.in_(candidates), self._due(now))
                .values(lease_token=token, lease_expires_at=now + self.lease)
            )
            claimed = [
                dict(r._mapping)
                for r in conn.execute(
                    sa.select(
                        t.decision_id, t.contact_id, t.action, t.payload, t.status, t.attempts
                    )
                    .where(t.lease_token == token)
                    .order_by(t.next_attempt_at, t.created_at, t.decision_id)
                )
            ]
        return claimed, len(candidates) - len(claimed)

    def _next_claimable_at(self) -> datetime | None:
        """The earliest time any unfinished row becomes claimable, or None if none is left."""
        t = self.outbox.c
        with self.engine.connect() as conn:
            pending = conn.execute(
                sa.select(t.next_attempt_at, t.lease_expires_at).where(t.status == "pending")
            ).all()
            sent = conn.execute(
                sa.select(sa.func.min(t.lease_expires_at)).where(t.status == "sent")
            ).scalar()
        times = [max(n, lease) if lease is not None else n for n, lease in pending]
        if sent is not None:
            times.append(sent)
        return min(times) if times else None

    def _dispatch_row(
        self,
        row: dict[str, Any],
        token: str,
        adapter: CrmAdapter,
        summary: DispatchSummary,
        clock: Clock,
        rng: random.Random,
        on_step: StepObserver | None,
    ) -> None:
        decision_id = row["decision_id"]
        if on_step:
            on_step("claimed", decision_id)
        attempts = int(row["attempts"]) + 1
        with self.engine.begin() as conn:
            marked = conn.execute(
                self._mark_sent_stmt,
                {
                    "b_id": decision_id,
                    "b_token": token,
                    "b_attempts": attempts,
                    "b_now": _as_db_time(clock()),
                },
            ).rowcount
        if marked != 1:  # our lease expired and another dispatcher took the row over
            summary.skipped += 1
            return
        if on_step:
            on_step("marked_sent", decision_id)
        summary.sent += 1
        payload = row["payload"]
        if isinstance(payload, str):  # drivers without JSON support hand back text
            payload = json.loads(payload)
        try:
            result = adapter.create_task(payload, decision_id)
        except PermanentCrmError as exc:
            if on_step:
                on_step("crm_answered", decision_id)
            self._mark_dead(
                decision_id, token, attempts, exc.reason, exc.status_code, exc.body_excerpt, clock
            )
            summary.dead += 1
        except RetryableCrmError as exc:
            if on_step:
                on_step("crm_answered", decision_id)
            self._retry_or_give_up(
                decision_id,
                token,
                attempts,
                exc.reason,
                exc.retry_after,
                exc.status_code,
                exc.body_excerpt,
                summary,
                clock,
                rng,
            )
        except Exception as exc:  # an adapter bug must not stop the batch; retried, then dead
            if on_step:
                on_step("crm_answered", decision_id)
            reason = f"unexpected {type(exc).__name__} from the CRM adapter: {exc}"
            self._retry_or_give_up(
                decision_id, token, attempts, reason, None, None, None, summary, clock, rng
            )
        else:
            if on_step:
                on_step("crm_answered", decision_id)
            with self.engine.begin() as conn:
                confirmed = conn.execute(
                    self._confirm_stmt,
                    {
                        "b_id": decision_id,
                        "b_external_id": result.external_id,
                        "b_now": _as_db_time(clock()),
                    },
                ).rowcount
            if confirmed == 1:
                summary.confirmed += 1
        if on_step:
            on_step("recorded", decision_id)

    def _retry_or_give_up(
        self,
        decision_id: str,
        token: str,
        attempts: int,
        reason: str,
        retry_after: float | None,
        status_code: int | None,
        excerpt: str | None,
        summary: DispatchSummary,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        if attempts >= self.retry_policy.max_attempts:
            self._mark_dead(
                decision_id,
                token,
                attempts,
                f"gave up after {attempts} attempts; last error: {reason}",
                status_code,
                excerpt,
                clock,
            )
            summary.dead += 1
            return
        now = _as_db_time(clock())
        delay = self.retry_policy.delay(attempts, retry_after, rng)
        t = self.outbox.c
        with self.engine.begin() as conn:
            updated = conn.execute(
                self.outbox.update()
                .where(t.decision_id == decision_id, t.lease_token == token, t.status == "sent")
                .values(
                    status="pending",
                    last_error=reason,
                    next_attempt_at=now + timedelta(seconds=delay),
                    lease_token=None,
                    lease_expires_at=None,
                    updated_at=now,
                )
            ).rowcount
        if updated == 1:
            summary.retried += 1

    def _mark_dead(
        self,
        decision_id: str,
        token: str,
        attempts: int,
        reason: str,
        status_code: int | None,
        excerpt: str | None,
        clock: Clock,
    ) -> None:
        now = _as_db_time(clock())
        t = self.outbox.c
        with self.engine.begin() as conn:
            updated = conn.execute(
                self.outbox.update()
                .where(t.decision_id == decision_id, t.lease_token == token, t.status == "sent")
                .values(
                    status="dead",
                    last_error=reason,
                    lease_token=None,
                    lease_expires_at=None,
                    updated_at=now,
                )
            ).rowcount
            if updated == 1:
                conn.execute(
                    self.dead_letter.insert().values(
                        decision_id=decision_id,
                        status_code=status_code,
                        body_excerpt=(excerpt or None) and excerpt[:BODY_EXCERPT_CHARS],
                        reason=reason,
                        attempts=attempts,
                        dead_lettered_at=now,
                    )
                )

    # -- inspection and operations -------------------------------------------------------------

    def status_counts(self) -> dict[str, int]:
        """Rows per status, every status present (zero if none)."""
        t = self.outbox.c
        with self.engine.connect() as conn:
            found = dict(
                conn.execute(sa.select(t.status, sa.func.count()).group_by(t.status)).tuples().all()
            )
        return {status: int(found.get(status, 0)) for status in STATUSES}

    def rows(self, status: str | None = None) -> list[dict[str, Any]]:
        """Outbox rows (optionally of one status), ordered by decision_id."""
        t = self.outbox.c
        query = sa.select(self.outbox).order_by(t.decision_id)
        if status is not None:
            query = query.where(t.status == status)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def dead_letters(self) -> list[dict[str, Any]]:
        """Dead-letter rows, oldest first."""
        with self.engine.connect() as conn:
            return [
                dict(r._mapping)
                for r in conn.execute(sa.select(self.dead_letter).order_by(self.dead_letter.c.id))
            ]

    def requeue_dead(
        self, decision_ids: Iterable[str] | None = None, *, clock: Clock = utc_now
    ) -> int:
        """Put dead rows (all, or those named) back to pending with a fresh attempt budget,
        after the cause is fixed. Their dead-letter history stays. Returns rows requeued."""
        t = self.outbox.c
        now = _as_db_time(clock())
        query = self.outbox.update().where(t.status == "dead")
        if decision_ids is not None:
            query = query.where(t.decision_id.in_(list(decision_ids)))
        with self.engine.begin() as conn:
            return conn.execute(
                query.values(status="pending", attempts=0, next_attempt_at=now, updated_at=now)
            ).rowcount
