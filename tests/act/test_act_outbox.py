"""The outbox on SQLite and PostgreSQL: enqueue, dispatch, retries with backoff and
Retry-After, dead letters, leases."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from conftest import HUBSPOT_TOKEN, RecordingCrm, decision_rows

from journey_pipeline.act.crm import (
    CrmResult,
    HubSpotCrm,
    PermanentCrmError,
    RetryableCrmError,
)
from journey_pipeline.act.outbox import (
    DispatchSummary,
    Outbox,
    RetryPolicy,
    decision_payload,
    outbox_url_from_settings,
)


class ScriptedCrm:
    """Answers per decision from a script of outcomes (an exception, or None for success);
    successes get the external id ``X-<decision_id>``."""

    def __init__(self, script: dict[str, list[BaseException | None]] | None = None) -> None:
        self.script = script or {}
        self.calls: list[str] = []

    def create_task(self, decision, idempotency_key):
        self.calls.append(idempotency_key)
        outcomes = self.script.get(idempotency_key)
        outcome = outcomes.pop(0) if outcomes else None
        if outcome is not None:
            raise outcome
        return CrmResult(external_id=f"X-{idempotency_key}")


# -- enqueue ---------------------------------------------------------------------------------


def test_enqueue_takes_live_crm_bound_decisions_once(make_outbox, clock):
    outbox = make_outbox()
    rows = decision_rows(4)
    rows[1]["mode"] = "shadow"
    rows[2]["action"] = "no_offer"
    assert outbox.enqueue(rows, clock=clock) == 2
    assert outbox.enqueue(rows + decision_rows(6)[4:], clock=clock) == 2  # d00004, d00005
    queued = outbox.rows()
    assert [r["decision_id"] for r in queued] == ["d00000", "d00003", "d00004", "d00005"]
    first = queued[0]
    assert first["status"] == "pending" and first["attempts"] == 0
    assert first["payload"]["expected_rewards"] == {"no_offer": 0.0, "offer_a": 1.5, "offer_b": 0.7}
    assert first["payload"]["decided_at"].startswith("2026-03-02T08:00")
    assert outbox.status_counts() == {"pending": 4, "sent": 0, "confirmed": 0, "dead": 0}


def test_enqueue_accepts_a_dataframe(make_outbox):
    import pandas as pd

    frame = pd.DataFrame(decision_rows(3))
    frame.loc[1, "propensity"] = float("nan")
    assert make_outbox().enqueue(frame) == 3


def test_enqueue_dead_letters_unusable_decisions_instead_of_dropping_them(make_outbox, clock):
    outbox = make_outbox()
    rows = decision_rows(3)
    rows[0]["action"] = "offer_z"
    rows[1]["contact_id"] = None
    assert outbox.enqueue(rows, clock=clock) == 3
    assert outbox.status_counts()["dead"] == 2
    reasons = {d["decision_id"]: d["reason"] for d in outbox.dead_letters()}
    assert "unknown action 'offer_z'" in reasons["d00000"]
    assert "no contact_id" in reasons["d00001"]
    with pytest.raises(ValueError, match="no decision_id"):
        outbox.enqueue([{"contact_id": "C-1", "action": "offer_a", "mode": "live"}])


def test_decision_payload_is_plain_json():
    import numpy as np
    import pandas as pd

    row = dict(decision_rows(1)[0], propensity=np.float64(0.25), holdout=np.bool_(False))
    row["decided_at"] = pd.Timestamp("2026-03-02 08:00:00")
    row["model_version"] = pd.NaT
    row["explanation"] = "not json"
    payload = decision_payload(row)
    assert payload["propensity"] == 0.25 and payload["holdout"] is False
    assert payload["decided_at"] == "2026-03-02T08:00:00"
    assert payload["model_version"] is None
    assert payload["explanation"] == "not json"
    assert payload["rules_applied"] == []


def test_outbox_url_follows_settings(settings):
    import dataclasses

    assert outbox_url_from_settings(settings) == f"sqlite:///{settings.home}/outbox.db"
    prod = dataclasses.replace(settings, profile="production", postgres_dsn="postgres://u@h/db")
    assert outbox_url_from_settings(prod) == "postgresql://u@h/db"
    explicit = dataclasses.replace(settings, outbox_url="sqlite:///x.db")
    assert outbox_url_from_settings(explicit) == "sqlite:///x.db"
    box = Outbox.from_settings(settings)
    try:
        assert (settings.home / "outbox.db").exists()
    finally:
        box.dispose()


# -- dispatch --------------------------------------------------------------------------------


def test_dispatch_confirms_every_row_with_its_external_id(make_outbox, local_crm, clock):
    outbox = make_outbox()
    outbox.enqueue(decision_rows(25), clock=clock)
    summary = outbox.dispatch(local_crm, max_batch=10, clock=clock, sleep=clock.sleep)
    assert summary == DispatchSummary(sent=25, confirmed=25)
    assert local_crm.task_count() == 25
    rows = outbox.rows()
    assert {r["status"] for r in rows} == {"confirmed"}
    assert len({r["external_id"] for r in rows}) == 25
    assert all(r["lease_token"] is None and r["attempts"] == 1 for r in rows)
    # Nothing left: a second dispatch is a no-op.
    assert outbox.dispatch(local_crm, clock=clock, sleep=clock.sleep) == DispatchSummary()


def test_permanent_error_dead_letters_one_row_and_the_batch_goes_on(make_outbox, clock):
    outbox = make_outbox()
    outbox.enqueue(decision_rows(5), clock=clock)
    error = PermanentCrmError(
        "HubSpot task create: HTTP 400 with an HTML page ('Bad Request')",
        status_code=400,
        body_excerpt="Bad Request",
    )
    crm = ScriptedCrm({"d00002": [error]})
    summary = outbox.dispatch(crm, clock=clock, sleep=clock.sleep)
    assert summary == DispatchSummary(sent=5, confirmed=4, dead=1)
    assert outbox.status_counts() == {"pending": 0, "sent": 0, "confirmed": 4, "dead": 1}
    [dead] = outbox.dead_letters()
    assert dead["decision_id"] == "d00002" and dead["status_code"] == 400
    assert dead["body_excerpt"] == "Bad Request" and "HTML page" in dead["reason"]
    assert crm.calls.count("d00002") == 1  # never retried
    assert clock.sleeps == []


def test_adapter_bug_is_retried_then_dead_lettered_without_blocking(make_outbox, clock):
    outbox = make_outbox(retry_policy=RetryPolicy(max_attempts=2, base_delay_s=1))
    outbox.enqueue(decision_rows(3), clock=clock)
    crm = ScriptedCrm({"d00001": [KeyError("hs_task_subject"), KeyError("hs_task_subject")]})
    summary = outbox.dispatch(crm, clock=clock, sleep=clock.sleep, max_wait_s=60)
    assert summary == DispatchSummary(sent=4, confirmed=2, retried=1, dead=1)
    [dead] = outbox.dead_letters()
    assert dead["attempts"] == 2
    assert dead["reason"].startswith("gave up after 2 attempts; last error: unexpected KeyError")


def test_retry_honours_retry_after_without_real_waiting(make_outbox, clock):
    outbox = make_outbox(retry_policy=RetryPolicy(base_delay_s=1.0))
    outbox.enqueue(decision_rows(2), clock=clock)
    start = clock()
    crm = ScriptedCrm({"d00000": [RetryableCrmError("HTTP 429", retry_after=7, status_code=429)]})
    recording = RecordingCrm(crm, clock)
    summary = outbox.dispatch(recording, clock=clock, sleep=clock.sleep, rng=random.Random(1))
    assert summary == DispatchSummary(sent=3, confirmed=2, retried=1)
    # One wait, of at least Retry-After (the jitter ceiling for a first retry is 1 s).
    assert len(clock.sleeps) == 1 and 7 <= clock.sleeps[0] <= 7.001
    retry_time = [t for key, t in recording.calls if key == "d00000"][1]
    assert retry_time - start >= timedelta(seconds=7)
    assert outbox.status_counts()["confirmed"] == 2


def test_retry_after_beyond_the_wait_budget_is_left_for_a_later_run(make_outbox, clock):
    outbox = make_outbox()
    outbox.enqueue(decision_rows(1), clock=clock)
    crm = ScriptedCrm({"d00000": [RetryableCrmError("HTTP 429", retry_after=120)]})
    summary = outbox.dispatch(crm, clock=clock, sleep=clock.sleep, max_wait_s=30)
    assert summary == DispatchSummary(sent=1, retried=1)
    assert clock.sleeps == []
    [row] = outbox.rows()
    assert row["status"] == "pending" and row["last_error"] == "HTTP 429"
    clock.advance(60)
    assert outbox.dispatch(crm, clock=clock, sleep=clock.sleep, max_wait_s=0) == DispatchSummary()
    clock.advance(61)
    assert outbox.dispatch(crm, clock=clock, sleep=clock.sleep, max_wait_s=0).confirmed == 1
    assert crm.calls == ["d00000", "d00000"]


def test_max_attempts_dead_letters_with_the_last_answer(make_outbox, clock):
    outbox = make_outbox(retry_policy=RetryPolicy(max_attempts=4, base_delay_s=1))
    outbox.enqueue(decision_rows(1), clock=clock)
    err = RetryableCrmError("HTTP 503 with an HTML page", status_code=503, body_excerpt="down")
    crm = ScriptedCrm({"d00000": [err] * 10})
    summary = outbox.dispatch(crm, clock=clock, sleep=clock.sleep, max_wait_s=3600)
    assert summary == DispatchSummary(sent=4, retried=3, dead=1)
    assert len(clock.sleeps) == 3
    [dead] = outbox.dead_letters()
    assert dead["status_code"] == 503 and dead["attempts"] == 4
    assert "gave up after 4 attempts" in dead["reason"]
    # After the cause is fixed, an operator requeues it and it goes through.
    assert outbox.requeue_dead(clock=clock) == 1
    assert outbox.dispatch(ScriptedCrm(), clock=clock, sleep=clock.sleep).confirmed == 1


def test_backoff_is_exponential_with_full_jitter():
    policy = RetryPolicy(base_delay_s=2, max_delay_s=60)
    rng = random.Random(7)
    for attempts, ceiling in [(1, 2), (2, 4), (3, 8), (4, 16), (10, 60)]:
        delays = [policy.delay(attempts, None, rng) for _ in range(400)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > 0.8 * ceiling and min(delays) < 0.2 * ceiling  # spread, not fixed
    assert policy.delay(1, 30.0, rng) == 30.0  # Retry-After is a floor


def test_hubspot_429_then_success_through_the_outbox(make_outbox, fake_hubspot, clock):
    outbox = make_outbox()
    outbox.enqueue(decision_rows(3), clock=clock)
    fake_hubspot.inject(op="create", status=429, retry_after="5")
    crm = HubSpotCrm(HUBSPOT_TOKEN, fake_hubspot.base_url, timeout=2)
    summary = outbox.dispatch(crm, clock=clock, sleep=clock.sleep)
    assert summary.confirmed == 3 and summary.retried == 1
    assert clock.sleeps and clock.sleeps[0] >= 5
    for row in outbox.rows():
        [task] = fake_hubspot.tasks_for(row["decision_id"])
        assert row["external_id"] == task.id


def test_hubspot_html_4xx_and_unknown_contact_dead_letter_only_their_rows(
    make_outbox, fake_hubspot, clock
):
    outbox = make_outbox()
    rows = decision_rows(5)
    rows[4]["contact_id"] = "C-99999"  # not in HubSpot: the association is refused
    outbox.enqueue(rows, clock=clock)
    fake_hubspot.inject(op="create", status=400, body="html", contact_id="C-00001")
    crm = HubSpotCrm(HUBSPOT_TOKEN, fake_hubspot.base_url, timeout=2)
    summary = outbox.dispatch(crm, clock=clock, sleep=clock.sleep)
    assert summary == DispatchSummary(sent=5, confirmed=3, dead=2)
    dead = {d["decision_id"]: d for d in outbox.dead_letters()}
    assert set(dead) == {"d00001", "d00004"}
    assert dead["d00001"]["status_code"] == 400 and "HTML page" in dead["d00001"]["reason"]
    assert dead["d00001"]["body_excerpt"].startswith("502 Bad Gateway")
    assert "associations are invalid" in dead["d00004"]["reason"]
    assert len(fake_hubspot.tasks) == 3


def test_leased_rows_are_not_claimed_until_the_lease_expires(make_outbox, clock):
    outbox = make_outbox(lease_seconds=120)
    outbox.enqueue(decision_rows(3), clock=clock)

    class Abandon(BaseException):
        pass

    def abandon(step, decision_id):
        if step == "claimed":
            raise Abandon

    with pytest.raises(Abandon):
        outbox.dispatch(ScriptedCrm(), max_batch=3, clock=clock, sleep=clock.sleep, on_step=abandon)
    crm = ScriptedCrm()
    assert outbox.dispatch(crm, clock=clock, sleep=clock.sleep, max_wait_s=0) == DispatchSummary()
    assert crm.calls == []
    clock.advance(121)
    assert outbox.dispatch(crm, clock=clock, sleep=clock.sleep).confirmed == 3
