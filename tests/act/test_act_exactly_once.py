"""Exactly-once write-back: crashes at every step, a CRM that fails after committing, and
overlapping dispatchers (threads and processes) never produce a second task."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import HUBSPOT_TOKEN, WEBHOOK_SECRET, RecordingCrm, decision_rows
from webhook_receiver import ReceiverFault

from journey_pipeline.act.crm import HubSpotCrm, LocalCrm, WebhookCrm
from journey_pipeline.act.outbox import DISPATCH_STEPS, Outbox, utc_now

REPO = Path(__file__).resolve().parents[2]
LEASE_S = 60


class SimulatedCrash(BaseException):
    """Stands for the process dying: not an ``Exception``, so nothing in the outbox catches it."""


def tasks_by_decision(kind: str, crm, fake_hubspot, webhook_receiver) -> dict[str, list[str]]:
    """decision_id -> ids of the tasks the CRM holds for it."""
    found: dict[str, list[str]] = {}
    if kind == "local":
        import sqlite3

        with sqlite3.connect(crm.path) as con:
            for decision_id, task_id in con.execute("SELECT decision_id, task_id FROM tasks"):
                found.setdefault(decision_id, []).append(str(task_id))
    elif kind == "hubspot":
        for task in fake_hubspot.tasks.values():
            found.setdefault(task.properties["journey_decision_id"], []).append(task.id)
    else:
        for key, task in webhook_receiver.tasks.items():
            found.setdefault(key, []).append(task["id"])
    return found


@pytest.fixture
def crm_of_kind(request, local_crm, fake_hubspot, webhook_receiver):
    kind = request.param
    if kind == "local":
        return kind, local_crm
    if kind == "hubspot":
        return kind, HubSpotCrm(HUBSPOT_TOKEN, fake_hubspot.base_url, timeout=2)
    return kind, WebhookCrm(webhook_receiver.url, WEBHOOK_SECRET, timeout=2)


def assert_exactly_once(outbox, kind, crm, fake_hubspot, webhook_receiver, n):
    tasks = tasks_by_decision(kind, crm, fake_hubspot, webhook_receiver)
    assert len(tasks) == n
    assert all(len(ids) == 1 for ids in tasks.values()), tasks
    rows = outbox.rows()
    assert [r["status"] for r in rows] == ["confirmed"] * n
    assert {r["decision_id"]: r["external_id"] for r in rows} == {
        d: ids[0] for d, ids in tasks.items()
    }


@pytest.mark.parametrize("step", DISPATCH_STEPS)
@pytest.mark.parametrize("crm_of_kind", ["local", "hubspot", "webhook"], indirect=True)
def test_crash_at_each_step_then_rerun_creates_each_task_once(
    step, crm_of_kind, make_outbox, clock, fake_hubspot, webhook_receiver
):
    kind, crm = crm_of_kind
    outbox = make_outbox(lease_seconds=LEASE_S)
    outbox.enqueue(decision_rows(6), clock=clock)
    victim = "d00003"

    def crash(at_step, decision_id):
        if at_step == step and decision_id == victim:
            raise SimulatedCrash(f"died at {step}")

    recording = RecordingCrm(crm)
    with pytest.raises(SimulatedCrash):
        outbox.dispatch(recording, max_batch=10, clock=clock, sleep=clock.sleep, on_step=crash)
    expected_state = {
        "claimed": "pending",
        "marked_sent": "sent",
        "crm_answered": "sent",
        "recorded": "confirmed",
    }[step]
    assert {r["decision_id"]: r["status"] for r in outbox.rows()}[victim] == expected_state
    if step in ("crm_answered", "recorded"):
        assert tasks_by_decision(kind, crm, fake_hubspot, webhook_receiver)[victim]

    # A rerun within the lease leaves the crashed dispatcher's rows alone...
    victim_calls = recording.keys().count(victim)
    outbox.dispatch(recording, clock=clock, sleep=clock.sleep, max_wait_s=0)
    assert recording.keys().count(victim) == victim_calls
    # ...and once the lease has run out, picks them up again.
    clock.advance(LEASE_S + 1)
    outbox.dispatch(recording, clock=clock, sleep=clock.sleep)

    assert_exactly_once(outbox, kind, crm, fake_hubspot, webhook_receiver, 6)
    calls = Counter(recording.keys())
    resent = 2 if step == "crm_answered" else 1  # the one case where the CRM saw it twice
    assert calls[victim] == resent
    assert all(count == 1 for key, count in calls.items() if key != victim)


def test_hubspot_500_after_commit_yields_one_task(make_outbox, fake_hubspot, clock):
    outbox = make_outbox()
    outbox.enqueue(decision_rows(4), clock=clock)
    fake_hubspot.inject(op="create", status=500, commit=True, contact_id="C-00001")
    fake_hubspot.inject(op="create", status=502, body="html", commit=True, contact_id="C-00002")
    crm = HubSpotCrm(HUBSPOT_TOKEN, fake_hubspot.base_url, timeout=2)
    summary = outbox.dispatch(crm, clock=clock, sleep=clock.sleep)
    assert summary.retried == 2 and summary.confirmed == 4 and summary.dead == 0
    assert_exactly_once(outbox, "hubspot", crm, fake_hubspot, None, 4)
    # The retries found the committed tasks by search and did not create again.
    assert Counter(fake_hubspot.ops())["create"] == 4


def test_hubspot_timeout_after_commit_yields_one_task(make_outbox, fake_hubspot, clock):
    outbox = make_outbox()
    outbox.enqueue(decision_rows(2), clock=clock)
    fake_hubspot.inject(op="create", status=201, commit=True, delay_s=0.8, contact_id="C-00000")
    crm = HubSpotCrm(HUBSPOT_TOKEN, fake_hubspot.base_url, timeout=0.3)
    summary = outbox.dispatch(crm, clock=clock, sleep=clock.sleep)
    assert summary.retried == 1 and summary.confirmed == 2
    assert_exactly_once(outbox, "hubspot", crm, fake_hubspot, None, 2)


def test_webhook_500_after_commit_yields_one_task(make_outbox, webhook_receiver, clock):
    outbox = make_outbox()
    outbox.enqueue(decision_rows(3), clock=clock)
    webhook_receiver.faults.append(
        ReceiverFault(500, "<html>oops</html>", "text/html", commit=True)
    )
    crm = WebhookCrm(webhook_receiver.url, WEBHOOK_SECRET, timeout=2)
    summary = outbox.dispatch(crm, clock=clock, sleep=clock.sleep)
    assert summary.retried == 1 and summary.confirmed == 3
    assert_exactly_once(outbox, "webhook", crm, None, webhook_receiver, 3)
    assert len(webhook_receiver.deliveries) == 4


def test_overlapping_dispatchers_in_threads_never_send_a_row_twice(
    outbox_url, make_outbox, local_crm
):
    n, workers = 80, 4
    make_outbox().enqueue(decision_rows(n))
    boxes = [make_outbox() for _ in range(workers)]
    recording = RecordingCrm(local_crm)
    barrier = threading.Barrier(workers)
    summaries = []
    errors: list[BaseException] = []

    def run(box: Outbox) -> None:
        try:
            barrier.wait()
            summaries.append(box.dispatch(recording, max_batch=5))
        except BaseException as exc:  # surfaced below: a thread must not fail silently
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(box,)) for box in boxes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    calls = Counter(recording.keys())
    assert len(calls) == n and max(calls.values()) == 1
    assert sum(s.sent for s in summaries) == n == sum(s.confirmed for s in summaries)
    assert local_crm.task_count() == n
    assert boxes[0].status_counts()["confirmed"] == n


CHILD = r"""
import json, os, sys, time
from pathlib import Path
from journey_pipeline.act.crm import LocalCrm
from journey_pipeline.act.outbox import Outbox

url, prefix, crm_path, go_file, crash_step, crash_after = sys.argv[1:7]
outbox = Outbox(url, table_prefix=prefix)
crm = LocalCrm(crm_path)
sent = []

class Recording:
    def create_task(self, decision, key):
        sent.append(key)
        return crm.create_task(decision, key)

def on_step(step, decision_id):
    if step == crash_step and len(sent) == int(crash_after):
        os._exit(17)  # the process dies on the spot: no cleanup, no rollback handlers

while not Path(go_file).exists():
    time.sleep(0.002)
summary = outbox.dispatch(Recording(), max_batch=5, on_step=on_step)
print(json.dumps({"sent": sent, "summary": summary.as_dict()}))
"""


def spawn(outbox: Outbox, crm: LocalCrm, go_file: Path, crash_step: str = "", crash_after: int = 0):
    prefix = outbox.outbox.name[: -len("crm_outbox")]
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            outbox.url,
            prefix,
            str(crm.path),
            str(go_file),
            crash_step,
            str(crash_after),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_overlapping_dispatcher_processes_never_send_a_row_twice(make_outbox, local_crm, tmp_path):
    n = 80
    outbox = make_outbox()
    outbox.enqueue(decision_rows(n))
    go = tmp_path / "go"
    children = [spawn(outbox, local_crm, go) for _ in range(2)]
    go.touch()
    results = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    sent = Counter(key for r in results for key in r["sent"])
    assert len(sent) == n and max(sent.values()) == 1
    assert local_crm.task_count() == n
    assert outbox.status_counts()["confirmed"] == n


def test_process_killed_between_crm_call_and_record_is_resumed_once(
    make_outbox, local_crm, tmp_path
):
    outbox = make_outbox()
    outbox.enqueue(decision_rows(10))
    go = tmp_path / "go"
    go.touch()
    child = spawn(outbox, local_crm, go, crash_step="crm_answered", crash_after=4)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 17, err
    rows = {r["decision_id"]: r for r in outbox.rows()}
    assert [r["status"] for r in rows.values()].count("sent") == 1
    assert local_crm.task_count() == 4  # the fourth task exists but was never recorded

    after_lease = lambda: utc_now() + timedelta(seconds=301)  # noqa: E731  (default lease 300 s)
    summary = outbox.dispatch(local_crm, clock=after_lease)
    assert summary.confirmed == 7 and summary.sent == 7
    assert local_crm.task_count() == 10
    tasks = tasks_by_decision("local", local_crm, None, None)
    assert {r["decision_id"]: r["external_id"] for r in outbox.rows()} == {
        d: ids[0] for d, ids in tasks.items()
    }
