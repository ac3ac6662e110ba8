"""Fixtures for the act stage: outboxes on SQLite and PostgreSQL, an injectable clock, CRM
fakes for the SaaS/HTTP side, and decision-log rows."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fake_hubspot import FakeHubSpot
from webhook_receiver import WebhookReceiver

from journey_pipeline.act.crm import CrmResult, LocalCrm
from journey_pipeline.act.outbox import Outbox

POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
HUBSPOT_TOKEN = "pat-test-token"
WEBHOOK_SECRET = "whsec-test"


def _postgres_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(autouse=True)
def _own_journey_home(journey_home):
    """Every act test runs with its own JOURNEY_HOME under tmp_path."""
    return journey_home


class FakeClock:
    """A clock that only moves when told to; ``sleep`` advances it and records the wait."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += timedelta(seconds=seconds)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def decision_rows(n: int, *, prefix: str = "d", contact: Callable[[int], str] | None = None):
    """``n`` live decision-log rows with CRM-bound actions (offer_a / offer_b alternating)."""
    contact = contact or (lambda i: f"C-{i:05d}")
    return [
        {
            "decision_id": f"{prefix}{i:05d}",
            "contact_id": contact(i),
            "decided_at": datetime(2026, 3, 2, 8, 0, tzinfo=UTC),
            "trigger_event_id": f"evt-{i}",
            "trigger_type": "cart.abandoned",
            "policy_version": "p1",
            "model_version": None,
            "mode": "live",
            "action": "offer_a" if i % 2 == 0 else "offer_b",
            "propensity": 0.5,
            "holdout": False,
            "expected_rewards": '{"no_offer": 0.0, "offer_a": 1.5, "offer_b": 0.7}',
            "explanation": '[{"feature": "spend_30d", "contribution": 0.4}]',
            "rules_applied": "[]",
            "fallback_reason": None,
        }
        for i in range(n)
    ]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def outbox_url(request, tmp_path) -> str:
    if request.param == "postgres":
        if not _postgres_up():
            pytest.skip("PostgreSQL is not running on 127.0.0.1:5432 (start it: see .ci/run)")
        return POSTGRES_URL
    return f"sqlite:///{tmp_path}/outbox.db"


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/outbox.db"


@pytest.fixture
def make_outbox(outbox_url) -> Iterator[Callable[..., Outbox]]:
    """Build outboxes on ``outbox_url``; on PostgreSQL each test gets its own table prefix,
    and its tables are dropped afterwards."""
    prefix = f"t{uuid.uuid4().hex[:10]}_" if outbox_url.startswith("postgresql") else ""
    made: list[Outbox] = []

    def build(**kwargs: Any) -> Outbox:
        box = Outbox(outbox_url, table_prefix=prefix, **kwargs)
        made.append(box)
        return box

    yield build
    if made and prefix:
        made[0].drop_tables()
    for box in made:
        box.dispose()


@pytest.fixture
def local_crm(journey_home) -> LocalCrm:
    return LocalCrm(journey_home / "crm.db")


@pytest.fixture
def fake_hubspot() -> Iterator[FakeHubSpot]:
    contacts = {f"C-{i:05d}" for i in range(500)}
    with FakeHubSpot(HUBSPOT_TOKEN, contacts) as fake:
        yield fake


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(WEBHOOK_SECRET) as receiver:
        yield receiver


class RecordingCrm:
    """Wraps an adapter and records every call (decision id, clock time), thread-safely:
    lets tests tell "the CRM deduplicated" apart from "nobody sent twice"."""

    def __init__(self, inner: Any, clock: Callable[[], datetime] | None = None) -> None:
        self.inner = inner
        self.clock = clock
        self.calls: list[tuple[str, datetime | None]] = []
        self._lock = threading.Lock()

    def create_task(self, decision: dict[str, Any], idempotency_key: str) -> CrmResult:
        with self._lock:
            self.calls.append((idempotency_key, self.clock() if self.clock else None))
        return self.inner.create_task(decision, idempotency_key)

    def keys(self) -> list[str]:
        return [k for k, _ in self.calls]
