"""The local CRM over SQLite: contacts, change log and tasks."""

from __future__ import annotations

import sqlite3

from journey_pipeline.sim.crm import ContactChange, LocalCrmStore


def _row(cid: str, stage: str) -> dict:
    return {
        "contact_id": cid,
        "email": f"{cid.lower()}@example.com",
        "phone": "+15550000001",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "lifecycle_stage": stage,
        "status": "active",
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
    }


def test_wal_mode_and_busy_timeout(crm):
    mode = crm.connection.execute("PRAGMA journal_mode").fetchone()[0]
    timeout = crm.connection.execute("PRAGMA busy_timeout").fetchone()[0]
    assert mode == "wal"
    assert timeout >= 5_000


def test_changes_update_contacts_and_append_change_log(crm):
    seqs = crm.apply_changes(
        [
            ContactChange("C-1", "c", None, _row("C-1", "lead"), "2026-01-01T01:00:00Z"),
            ContactChange("C-2", "c", None, _row("C-2", "lead"), "2026-01-01T01:00:01Z"),
        ]
    )
    assert seqs == [1, 2]
    seqs = crm.apply_changes(
        [
            ContactChange(
                "C-1", "u", _row("C-1", "lead"), _row("C-1", "mql"), "2026-01-02T01:00:00Z"
            ),
            ContactChange("C-2", "d", _row("C-2", "lead"), None, "2026-01-02T02:00:00Z"),
        ]
    )
    assert seqs == [3, 4]
    assert crm.get_contact("C-1")["lifecycle_stage"] == "mql"
    assert crm.get_contact("C-2") is None
    assert crm.count_contacts() == 1
    log = crm.change_log()
    assert [(r["seq"], r["contact_id"], r["op"]) for r in log] == [
        (1, "C-1", "c"),
        (2, "C-2", "c"),
        (3, "C-1", "u"),
        (4, "C-2", "d"),
    ]
    assert log[2]["before"]["lifecycle_stage"] == "lead"
    assert log[2]["after"]["lifecycle_stage"] == "mql"
    assert log[3]["after"] is None


def test_upsert_contacts_logs_create_then_update(crm):
    crm.upsert_contacts([_row("C-7", "lead")], "2026-01-01T00:00:00Z")
    crm.upsert_contacts([_row("C-7", "sql")], "2026-01-02T00:00:00Z")
    assert [r["op"] for r in crm.change_log()] == ["c", "u"]
    assert crm.change_log(after_seq=1)[0]["before"]["lifecycle_stage"] == "lead"


def test_tasks_are_unique_by_decision_and_filtered_by_creation_time(crm):
    assert crm.create_task("d-1", "C-1", "offer_a", "2026-01-01T10:00:00Z")
    assert not crm.create_task("d-1", "C-1", "offer_b", "2026-01-01T11:00:00Z")
    assert crm.create_task("d-2", "C-2", "offer_b", "2026-01-02T10:00:00+00:00")
    assert [t.decision_id for t in crm.open_tasks()] == ["d-1", "d-2"]
    assert [t.decision_id for t in crm.open_tasks(before="2026-01-02T00:00:00")] == ["d-1"]
    assert crm.open_tasks()[0].action == "offer_a"


def test_mark_applied_closes_only_open_tasks(crm):
    crm.create_task("d-1", "C-1", "offer_a", "2026-01-01T10:00:00Z")
    crm.create_task("d-2", "C-1", "offer_b", "2026-01-01T10:00:00Z")
    ids = [t.task_id for t in crm.open_tasks()]
    assert crm.mark_applied(ids[:1], "2026-01-02T00:00:00Z") == 1
    assert crm.mark_applied(ids[:1], "2026-01-03T00:00:00Z") == 0
    assert crm.task_status("d-1") == "applied"
    assert crm.task_status("d-2") == "open"
    applied_at = crm.connection.execute(
        "SELECT applied_at FROM tasks WHERE decision_id = 'd-1'"
    ).fetchone()[0]
    assert applied_at == "2026-01-02T00:00:00Z"


def test_another_process_can_insert_tasks_into_the_same_file(crm, journey_home):
    # The act stage writes through its own connection while the simulator holds one.
    other = sqlite3.connect(journey_home / "crm.db")
    other.execute(
        "INSERT INTO tasks (decision_id, contact_id, action, created_at) "
        "VALUES ('d-9', 'C-9', 'no_offer', '2026-01-01T00:00:00Z')"
    )
    other.commit()
    other.close()
    assert [t.decision_id for t in crm.open_tasks()] == ["d-9"]
    again = LocalCrmStore(journey_home / "crm.db")  # re-opening keeps the data
    assert again.task_status("d-9") == "open"
    again.close()
