"""CRM adapters on their own: idempotency, request shape, and how every kind of bad answer is
classified (retryable or permanent, with a readable reason), never a crash."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from conftest import HUBSPOT_TOKEN, WEBHOOK_SECRET, decision_rows
from fake_hubspot import FakeHubSpot, Fault
from webhook_receiver import ReceiverFault

from journey_pipeline.act.crm import (
    CrmAdapter,
    HubSpotCrm,
    LocalCrm,
    PermanentCrmError,
    RetryableCrmError,
    WebhookCrm,
    crm_from_settings,
    parse_retry_after,
    sign_body,
    verify_signature,
)
from journey_pipeline.act.outbox import decision_payload


def payload(i: int = 0) -> dict:
    return decision_payload(decision_rows(i + 1)[i])


# -- helpers ---------------------------------------------------------------------------------


def test_parse_retry_after_reads_seconds_and_http_dates():
    now = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert (
        parse_retry_after(format_datetime(now + timedelta(seconds=90), usegmt=True), now=now) == 90
    )
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_signature_is_hmac_sha256_of_the_exact_body():
    body = b'{"a":1}'
    signature = sign_body(body, "s3cret")
    assert signature.startswith("sha256=") and len(signature) == 7 + 64
    assert verify_signature(body, "s3cret", signature)
    assert not verify_signature(body + b" ", "s3cret", signature)
    assert not verify_signature(body, "other", signature)
    assert not verify_signature(body, "s3cret", None)


# -- LocalCrm --------------------------------------------------------------------------------


def test_local_crm_repeated_call_returns_the_same_task(local_crm, journey_home):
    first = local_crm.create_task(payload(0), "d00000")
    again = local_crm.create_task(payload(0), "d00000")
    other = local_crm.create_task(payload(1), "d00001")
    assert first == again
    assert other != first
    with sqlite3.connect(journey_home / "crm.db") as con:
        rows = con.execute(
            "SELECT decision_id, contact_id, action, status, body FROM tasks"
        ).fetchall()
    assert len(rows) == 2
    assert rows[0][:4] == ("d00000", "C-00000", "offer_a", "open")
    assert json.loads(rows[0][4])["expected_rewards"]["offer_a"] == 1.5
    assert isinstance(local_crm, CrmAdapter)


def test_local_crm_rejects_a_decision_without_contact(local_crm):
    with pytest.raises(PermanentCrmError, match="contact_id"):
        local_crm.create_task({"action": "offer_a"}, "d1")
    assert local_crm.task_count() == 0


# -- WebhookCrm ------------------------------------------------------------------------------


def test_webhook_posts_signed_json_with_idempotency_key(webhook_receiver):
    crm = WebhookCrm(webhook_receiver.url, WEBHOOK_SECRET, timeout=2)
    first = crm.create_task(payload(0), "d00000")
    again = crm.create_task(payload(0), "d00000")
    assert first == again and first.external_id == "T1"
    assert len(webhook_receiver.tasks) == 1
    delivery = webhook_receiver.deliveries[0]
    assert delivery["key"] == "d00000" and delivery["valid_signature"]
    body = json.loads(delivery["body"])
    assert body["decision_id"] == "d00000" and body["action"] == "offer_a"
    assert body["decision"]["contact_id"] == "C-00000"


def test_webhook_with_the_wrong_secret_is_refused_permanently(webhook_receiver):
    crm = WebhookCrm(webhook_receiver.url, "not-the-secret", timeout=2)
    with pytest.raises(PermanentCrmError) as err:
        crm.create_task(payload(0), "d00000")
    assert err.value.status_code == 401 and "bad signature" in err.value.reason
    assert webhook_receiver.tasks == {}


@pytest.mark.parametrize(
    ("fault", "expected", "reason_part"),
    [
        (ReceiverFault(429, retry_after="12"), RetryableCrmError, "HTTP 429"),
        (
            ReceiverFault(
                503, "<html><body><h1>Service Unavailable</h1></body></html>", "text/html"
            ),
            RetryableCrmError,
            "HTML page",
        ),
        (ReceiverFault(500, "{not json"), RetryableCrmError, "not JSON"),
        (
            ReceiverFault(422, '{"message": "unknown contact"}'),
            PermanentCrmError,
            "unknown contact",
        ),
        (
            ReceiverFault(404, "<!DOCTYPE html><html><body>Not Found</body></html>", "text/html"),
            PermanentCrmError,
            "HTML page",
        ),
        (ReceiverFault(200, "<html>ok?</html>", "text/html"), RetryableCrmError, "HTTP 200"),
    ],
)
def test_webhook_classifies_bad_answers(webhook_receiver, fault, expected, reason_part):
    webhook_receiver.faults.append(fault)
    crm = WebhookCrm(webhook_receiver.url, WEBHOOK_SECRET, timeout=2)
    with pytest.raises(expected) as err:
        crm.create_task(payload(0), "d00000")
    assert reason_part in err.value.reason
    assert err.value.status_code == fault.status
    if fault.retry_after:
        assert err.value.retry_after == 12.0


def test_webhook_connection_refused_is_retryable():
    with socket_closed_port() as port:
        crm = WebhookCrm(f"http://127.0.0.1:{port}/hook", WEBHOOK_SECRET, timeout=1)
        with pytest.raises(RetryableCrmError, match="connection failed"):
            crm.create_task(payload(0), "d00000")


def socket_closed_port():
    """A context giving a local port nothing listens on."""
    import contextlib
    import socket

    @contextlib.contextmanager
    def closed():
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        yield port

    return closed()


# -- HubSpotCrm ------------------------------------------------------------------------------


def hubspot(fake: FakeHubSpot, timeout: float = 2.0) -> HubSpotCrm:
    return HubSpotCrm(HUBSPOT_TOKEN, fake.base_url, timeout=timeout)


def test_hubspot_creates_one_task_on_the_contact_and_finds_it_again(fake_hubspot):
    crm = hubspot(fake_hubspot)
    first = crm.create_task(payload(3), "d00003")
    again = crm.create_task(payload(3), "d00003")
    assert first == again
    [task] = fake_hubspot.tasks_for("d00003")
    assert task.id == first.external_id
    assert task.contact_ids == ["C-00003"]
    assert task.properties["hs_task_subject"].startswith("Next best action: offer_b")
    assert json.loads(task.properties["hs_task_body"])["decision_id"] == "d00003"
    # HubSpot lists the association from the task's side too.
    import httpx

    listed = httpx.get(
        f"{fake_hubspot.base_url}/crm/v4/objects/tasks/{task.id}/associations/contacts",
        headers={"Authorization": f"Bearer {HUBSPOT_TOKEN}"},
    ).json()
    assert [a["toObjectId"] for a in listed["results"]] == ["C-00003"]
    # Search always precedes create; the repeat only searched.
    assert fake_hubspot.ops() == ["search", "create", "search", "associations"]
    create = next(r for r in fake_hubspot.requests if r.op == "create")
    assert create.body["associations"][0]["types"] == [
        {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 204}
    ]


@pytest.mark.parametrize(
    ("fault", "expected", "reason_part"),
    [
        (Fault(op="create", status=429, retry_after="7"), RetryableCrmError, "secondly limit"),
        (Fault(op="search", status=500), RetryableCrmError, "HTTP 500"),
        (Fault(op="create", status=502, body="html"), RetryableCrmError, "HTML page"),
        (Fault(op="create", status=201, body="garbage"), RetryableCrmError, "not JSON"),
        (Fault(op="search", status=200, body="garbage"), RetryableCrmError, "not JSON"),
        (Fault(op="create", status=400, body="html"), PermanentCrmError, "HTML page"),
        (Fault(op="create", status=403), PermanentCrmError, "HTTP 403"),
    ],
)
def test_hubspot_classifies_bad_answers(fake_hubspot, fault, expected, reason_part):
    fake_hubspot.inject(fault)
    with pytest.raises(expected) as err:
        hubspot(fake_hubspot).create_task(payload(0), "d00000")
    assert reason_part in err.value.reason
    if fault.retry_after:
        assert err.value.retry_after == 7.0
    if expected is PermanentCrmError:
        assert err.value.status_code == fault.status and err.value.body_excerpt


def test_hubspot_timeout_is_retryable_and_a_retry_finds_the_committed_task(fake_hubspot):
    fake_hubspot.inject(op="create", status=201, commit=True, delay_s=1.0)
    crm = hubspot(fake_hubspot, timeout=0.3)
    with pytest.raises(RetryableCrmError, match="timed out"):
        crm.create_task(payload(0), "d00000")
    result = crm.create_task(payload(0), "d00000")
    [task] = fake_hubspot.tasks_for("d00000")
    assert result.external_id == task.id


def test_hubspot_unknown_contact_is_permanent(fake_hubspot):
    decision = dict(payload(0), contact_id="C-99999")
    with pytest.raises(PermanentCrmError, match="associations are invalid") as err:
        hubspot(fake_hubspot).create_task(decision, "d00000")
    assert err.value.status_code == 400
    assert fake_hubspot.tasks == {}


def test_hubspot_bad_token_is_permanent(fake_hubspot):
    crm = HubSpotCrm("pat-wrong", fake_hubspot.base_url)
    with pytest.raises(PermanentCrmError) as err:
        crm.create_task(payload(0), "d00000")
    assert err.value.status_code == 401


def test_hubspot_unique_property_conflict_resolves_to_the_existing_task():
    # With journey_decision_id as a unique-value property, a create whose pre-create search
    # missed (HubSpot's search index lags writes) is refused with 409; the adapter then
    # answers with the task that exists instead of failing or duplicating it.
    with FakeHubSpot(HUBSPOT_TOKEN, {"C-00000"}, unique_property="journey_decision_id") as fake:
        crm = hubspot(fake)
        first = crm.create_task(payload(0), "d00000")
        fake.inject(op="search", status=200, body="empty")  # the lagging index misses once
        again = crm.create_task(payload(0), "d00000")
    assert again == first
    assert len(fake.tasks) == 1
    assert [r.op for r in fake.requests][-3:] == ["search", "create", "search"]


# -- factory ---------------------------------------------------------------------------------


def test_crm_from_settings_builds_each_kind(settings, fake_hubspot, webhook_receiver):
    local = crm_from_settings(settings)
    assert isinstance(local, LocalCrm) and local.path == settings.crm_path
    hook = crm_from_settings(settings, "webhook", url=webhook_receiver.url, secret=WEBHOOK_SECRET)
    assert isinstance(hook, WebhookCrm)
    hs = crm_from_settings(
        settings, "hubspot", access_token=HUBSPOT_TOKEN, base_url=fake_hubspot.base_url
    )
    assert (
        hs.create_task(payload(0), "d00000").external_id == fake_hubspot.tasks_for("d00000")[0].id
    )
    with pytest.raises(ValueError, match="JOURNEY_CRM_WEBHOOK_URL"):
        crm_from_settings(settings, "webhook")
    with pytest.raises(ValueError, match="JOURNEY_HUBSPOT_TOKEN"):
        crm_from_settings(settings, "hubspot")
    with pytest.raises(ValueError, match="unknown CRM kind"):
        crm_from_settings(settings, "salesforce")


def test_crm_from_settings_reads_the_environment(tmp_path, webhook_receiver):
    from journey_pipeline.settings import load_settings

    configured = load_settings(
        {
            "JOURNEY_HOME": str(tmp_path),
            "JOURNEY_CRM": "webhook",
            "JOURNEY_CRM_WEBHOOK_URL": webhook_receiver.url,
            "JOURNEY_CRM_WEBHOOK_SECRET": WEBHOOK_SECRET,
        }
    )
    crm = crm_from_settings(configured)
    assert isinstance(crm, WebhookCrm) and crm.url == webhook_receiver.url
