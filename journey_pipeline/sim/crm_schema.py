"""Schema of the embedded local CRM (``JOURNEY_HOME/crm.db``, SQLite).

Shared contract between the simulator (which owns the contacts and reads tasks to apply
actions) and the act stage's ``LocalCrm`` adapter (which creates tasks).

- ``contacts``: one row per contact, with raw PII as a real CRM holds it.
- ``tasks``: where decisions land. ``decision_id`` is UNIQUE: the idempotency key of a write.
  ``status`` goes ``open`` -> ``applied`` once the simulator has acted on it.
- ``change_log``: every contact insert/update/delete; the simulator emits ``contact.*``
  events from it (canonical JSON, or Debezium envelopes as an option).
"""

CRM_DDL = """
CREATE TABLE IF NOT EXISTS contacts (
    contact_id      TEXT PRIMARY KEY,
    email           TEXT,
    phone           TEXT,
    first_name      TEXT,
    last_name       TEXT,
    lifecycle_stage TEXT NOT NULL,
    status          TEXT NOT NULL,
    acquisition_channel TEXT,
    loyalty_member  INTEGER,          -- 1/0
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    task_id         INTEGER PRIMARY KEY AUTOINCREMENT,
    decision_id     TEXT NOT NULL UNIQUE,
    contact_id      TEXT NOT NULL,
    action          TEXT NOT NULL,
    subject         TEXT,
    body            TEXT,             -- JSON: the decision as sent
    status          TEXT NOT NULL DEFAULT 'open',
    created_at      TEXT NOT NULL,
    applied_at      TEXT
);
CREATE INDEX IF NOT EXISTS tasks_status ON tasks(status);
CREATE TABLE IF NOT EXISTS change_log (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    contact_id      TEXT NOT NULL,
    op              TEXT NOT NULL CHECK (op IN ('c', 'u', 'd')),
    before_json     TEXT,
    after_json      TEXT,
    changed_at      TEXT NOT NULL
);
"""
