"""The embedded local CRM: a SQLite file (``JOURNEY_HOME/crm.db``) with the schema of
:mod:`journey_pipeline.sim.crm_schema`.

The simulator owns the ``contacts`` table and the ``change_log``; the act stage inserts rows
into ``tasks`` (one per decision, ``decision_id`` UNIQUE) and the simulator applies them. Both
processes may hold the file at once, so it runs in WAL mode with a busy timeout: a writer
waits for the other instead of failing on a lock.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson

from journey_pipeline.sim.crm_schema import CRM_DDL

# Column order of the contacts table; also the shape of a change_log before/after image.
CONTACT_COLUMNS: tuple[str, ...] = (
    "contact_id",
    "email",
    "phone",
    "first_name",
    "last_name",
    "lifecycle_stage",
    "status",
    "acquisition_channel",
    "loyalty_member",
    "created_at",
    "updated_at",
)

BUSY_TIMEOUT_MS = 30_000

_UPSERT_CONTACT = (
    f"INSERT INTO contacts ({', '.join(CONTACT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(CONTACT_COLUMNS))}) "
    "ON CONFLICT(contact_id) DO UPDATE SET "
    + ", ".join(f"{col} = excluded.{col}" for col in CONTACT_COLUMNS[1:])
)


@dataclass(frozen=True)
class ContactChange:
    """One change to a contact row: ``op`` is ``c`` (insert), ``u`` (update) or ``d`` (delete).

    ``before``/``after`` are full contact rows (dicts keyed by :data:`CONTACT_COLUMNS`);
    ``before`` is None for an insert and ``after`` is None for a delete.
    """

    contact_id: str
    op: str
    before: dict | None
    after: dict | None
    changed_at: str


@dataclass(frozen=True)
class CrmTask:
    """A decision that landed in the CRM and waits to be acted on."""

    task_id: int
    decision_id: str
    contact_id: str
    action: str
    created_at: str


class CrmDayWriter:
    """Writes inside one open transaction of :meth:`LocalCrmStore.day_transaction`."""

    def __init__(self, cursor: sqlite3.Cursor, last_seq: int) -> None:
        self._cur = cursor
        self.last_seq = last_seq  # change_log.seq of the last change written

    def add_changes(self, changes: Sequence[ContactChange]) -> list[int]:
        """Apply contact changes (upsert or delete the row) and append one ``change_log``
        row each. Out: their ``change_log.seq`` values, in order."""
        cur = self._cur
        upserts = [
            tuple(c.after.get(col) for col in CONTACT_COLUMNS)
            for c in changes
            if c.op in ("c", "u") and c.after is not None
        ]
        deletes = [(c.contact_id,) for c in changes if c.op == "d"]
        if upserts:
            cur.executemany(_UPSERT_CONTACT, upserts)
        if deletes:
            cur.executemany("DELETE FROM contacts WHERE contact_id = ?", deletes)
        cur.executemany(
            "INSERT INTO change_log (seq, contact_id, op, before_json, after_json, changed_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                (
                    self.last_seq + k,
                    c.contact_id,
                    c.op,
                    None if c.before is None else orjson.dumps(c.before).decode(),
                    None if c.after is None else orjson.dumps(c.after).decode(),
                    c.changed_at,
                )
                for k, c in enumerate(changes, start=1)
            ],
        )
        seqs = list(range(self.last_seq + 1, self.last_seq + 1 + len(changes)))
        self.last_seq += len(changes)
        return seqs

    def close_tasks(self, applied: Sequence[int], skipped: Sequence[int], at: str | None) -> None:
        """Set tasks still ``open`` to ``applied`` or ``skipped``, with ``applied_at``."""
        for status, ids in (("applied", applied), ("skipped", skipped)):
            if ids:
                self._cur.executemany(
                    "UPDATE tasks SET status = ?, applied_at = ? "
                    "WHERE task_id = ? AND status = 'open'",
                    [(status, at, int(t)) for t in ids],
                )


class LocalCrmStore:
    """The local CRM over one SQLite file.

    ``LocalCrmStore(path)`` creates the file and schema if missing. Use it as a context
    manager or call :meth:`close`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000)
        self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._conn.execute("PRAGMA journal_mode = WAL")
        # WAL + NORMAL is durable across application crashes; only an OS crash can lose
        # the last transactions, which the simulator can regenerate.
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._conn.executescript(CRM_DDL)
        self._conn.commit()

    def __enter__(self) -> LocalCrmStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None  # type: ignore[assignment]

    @property
    def connection(self) -> sqlite3.Connection:
        """The underlying connection, for callers that read the tables directly."""
        return self._conn

    # -- contacts and change log -------------------------------------------------------

    @contextmanager
    def day_transaction(self) -> Iterator[CrmDayWriter]:
        """One write transaction (taken with ``BEGIN IMMEDIATE``, so the change-log sequence
        numbers handed out stay ours): commits when the block ends, rolls back if it raises.

        Out: a :class:`CrmDayWriter` to add contact changes (in chunks, so a day that syncs
        a million contacts never holds them all) and to close tasks.
        """
        cur = self._conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            start = cur.execute("SELECT COALESCE(MAX(seq), 0) FROM change_log").fetchone()[0]
            yield CrmDayWriter(cur, start)
        except BaseException:
            self._conn.rollback()
            raise
        self._conn.commit()

    def apply_changes(
        self,
        changes: Sequence[ContactChange],
        applied_task_ids: Sequence[int] = (),
        skipped_task_ids: Sequence[int] = (),
        tasks_at: str | None = None,
    ) -> list[int]:
        """Apply contact changes, append one ``change_log`` row for each and close tasks, all
        in one transaction.

        In: changes in the order they happened; ids of tasks acted on (status ``applied``)
        and of tasks that could not be acted on because their contact is gone or the action
        is unknown (status ``skipped``), both stamped ``applied_at = tasks_at``.
        Out: the ``change_log.seq`` of each change, in order (the position a CDC consumer
        would see).
        """
        with self.day_transaction() as writer:
            seqs = writer.add_changes(changes)
            writer.close_tasks(applied_task_ids, skipped_task_ids, tasks_at)
        return seqs

    def upsert_contacts(self, rows: Iterable[dict], changed_at: str) -> list[int]:
        """Insert or update full contact rows, logging each as ``c`` or ``u`` with its
        before image. Out: the change_log sequence numbers."""
        changes = []
        for row in rows:
            before = self.get_contact(row["contact_id"])
            changes.append(
                ContactChange(
                    row["contact_id"], "u" if before else "c", before, dict(row), changed_at
                )
            )
        return self.apply_changes(changes)

    def get_contact(self, contact_id: str) -> dict | None:
        """The contact row as a dict, or None if it does not exist (or was erased)."""
        row = self._conn.execute(
            f"SELECT {', '.join(CONTACT_COLUMNS)} FROM contacts WHERE contact_id = ?",
            (contact_id,),
        ).fetchone()
        return None if row is None else dict(zip(CONTACT_COLUMNS, row, strict=True))

    def count_contacts(self) -> int:
        """Number of contact rows currently held."""
        return self._conn.execute("SELECT COUNT(*) FROM contacts").fetchone()[0]

    def change_log(self, after_seq: int = 0) -> list[dict]:
        """Change-log rows with ``seq > after_seq`` in order, JSON images decoded."""
        rows = self._conn.execute(
            "SELECT seq, contact_id, op, before_json, after_json, changed_at FROM change_log "
            "WHERE seq > ? ORDER BY seq",
            (after_seq,),
        ).fetchall()
        return [
            {
                "seq": seq,
                "contact_id": cid,
                "op": op,
                "before": None if b is None else orjson.loads(b),
                "after": None if a is None else orjson.loads(a),
                "changed_at": at,
            }
            for seq, cid, op, b, a, at in rows
        ]

    # -- tasks ---------------------------------------------------------------------------

    def create_task(
        self,
        decision_id: str,
        contact_id: str,
        action: str,
        created_at: str,
        subject: str | None = None,
        body: str | None = None,
    ) -> bool:
        """Insert an open task unless one with this ``decision_id`` exists.

        Out: True if a row was inserted. The act stage has its own adapter; this is for
        tests, notebooks and tools that drive the world by hand.
        """
        with self._conn:
            cur = self._conn.execute(
                "INSERT INTO tasks (decision_id, contact_id, action, subject, body, status, "
                "created_at) VALUES (?, ?, ?, ?, ?, 'open', ?) "
                "ON CONFLICT(decision_id) DO NOTHING",
                (decision_id, contact_id, action, subject, body, created_at),
            )
        return cur.rowcount == 1

    def open_tasks(self, before: str | None = None) -> list[CrmTask]:
        """Tasks with status ``open``, optionally only those with ``created_at < before``
        (ISO-8601 strings compare in time order when written in the same UTC form).

        Out: tasks ordered by (created_at, decision_id), an order that does not depend on
        which process inserted first, so a simulation replays identically.
        """
        sql = "SELECT task_id, decision_id, contact_id, action, created_at FROM tasks "
        sql += "WHERE status = 'open'"
        params: tuple = ()
        if before is not None:
            sql += " AND created_at < ?"
            params = (before,)
        sql += " ORDER BY created_at, decision_id"
        return [CrmTask(*row) for row in self._conn.execute(sql, params).fetchall()]

    def mark_applied(self, task_ids: Sequence[int], at: str) -> int:
        """Set ``status = 'applied'`` and ``applied_at = at`` on open tasks among
        ``task_ids``. Out: number of tasks changed."""
        if not task_ids:
            return 0
        with self._conn:
            cur = self._conn.executemany(
                "UPDATE tasks SET status = 'applied', applied_at = ? "
                "WHERE task_id = ? AND status = 'open'",
                [(at, int(t)) for t in task_ids],
            )
        return cur.rowcount

    def task_status(self, decision_id: str) -> str | None:
        """Status of the task for ``decision_id``, or None if there is none."""
        row = self._conn.execute(
            "SELECT status FROM tasks WHERE decision_id = ?", (decision_id,)
        ).fetchone()
        return None if row is None else row[0]
