"""CRM adapters: where a decision becomes a task, exactly once.

Every adapter implements :class:`CrmAdapter`: ``create_task(decision, idempotency_key)`` returns
a :class:`CrmResult` naming the CRM's record, and a repeated call with the same key returns the
same record instead of creating a second one. Failures are typed so the outbox can decide what
to do without knowing the CRM: :class:`RetryableCrmError` (429, 5xx, timeouts, connection
errors, unreadable answers) and :class:`PermanentCrmError` (other 4xx, invalid decisions).

- :class:`LocalCrm`: the embedded SQLite CRM of the simulator (``JOURNEY_HOME/crm.db``).
- :class:`WebhookCrm`: an HTTP POST of signed JSON to any endpoint.
- :class:`HubSpotCrm`: a HubSpot task associated with the contact, via ``hubspot-api-client``.
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import json
import os
import re
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import httpx

from journey_pipeline.settings import Settings
from journey_pipeline.sim.crm_schema import CRM_DDL

CRM_KINDS = ("local", "webhook", "hubspot")
SIGNATURE_HEADER = "X-Journey-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
BODY_EXCERPT_CHARS = 300
# HubSpot's built-in association type "task to contact".
HUBSPOT_TASK_TO_CONTACT = 204
HUBSPOT_DECISION_PROPERTY = "journey_decision_id"
HUBSPOT_DEFAULT_BASE_URL = "https://api.hubapi.com"

# Statuses worth another try: throttling, server trouble, and request timeouts/too early.
_RETRYABLE_STATUSES = frozenset({408, 425, 429})


@dataclass(frozen=True)
class CrmResult:
    """The CRM's answer to a task creation: the id of the task in that CRM."""

    external_id: str


class CrmError(Exception):
    """A CRM call that did not produce a task. ``reason`` is meant for people reading the
    dead-letter table; ``status_code`` and ``body_excerpt`` describe the HTTP answer, if any."""

    def __init__(
        self, reason: str, *, status_code: int | None = None, body_excerpt: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code
        self.body_excerpt = body_excerpt


class RetryableCrmError(CrmError):
    """Trying again later may succeed. ``retry_after`` (seconds) is the CRM's own hint."""

    def __init__(
        self,
        reason: str,
        *,
        retry_after: float | None = None,
        status_code: int | None = None,
        body_excerpt: str | None = None,
    ) -> None:
        super().__init__(reason, status_code=status_code, body_excerpt=body_excerpt)
        self.retry_after = retry_after


class PermanentCrmError(CrmError):
    """Trying again cannot succeed (invalid request, unknown contact, no permission)."""


@runtime_checkable
class CrmAdapter(Protocol):
    """What the outbox needs from a CRM."""

    def create_task(self, decision: Mapping[str, Any], idempotency_key: str) -> CrmResult:
        """Create (or find, when ``idempotency_key`` was seen before) the task for ``decision``.

        ``decision`` is a decision-log row (at least contact_id and action). Raises
        :class:`RetryableCrmError` or :class:`PermanentCrmError`."""
        ...


# -- helpers shared by the HTTP adapters ---------------------------------------------------


def json_default(value: Any) -> Any:
    """``json.dumps`` fallback for the types decision-log rows carry (timestamps, numpy)."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):  # numpy arrays
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def canonical_json(value: Any) -> bytes:
    """Compact JSON with sorted keys: the same decision always serialises to the same bytes,
    so a signature or a stored payload can be compared byte for byte."""
    return json.dumps(
        value, default=json_default, sort_keys=True, separators=(",", ":"), allow_nan=False
    ).encode()


def sign_body(body: bytes, secret: str | bytes) -> str:
    """The ``X-Journey-Signature`` header value: ``sha256=<hex HMAC-SHA256 of body>``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, secret: str | bytes, header_value: str | None) -> bool:
    """True if ``header_value`` is the signature of ``body`` with ``secret`` (constant time)."""
    return header_value is not None and hmac.compare_digest(sign_body(body, secret), header_value)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date.
    ``None`` when absent or unreadable (the caller then uses its own backoff)."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


def body_excerpt(body: bytes | str | None, limit: int = BODY_EXCERPT_CHARS) -> str:
    """The start of a response body as readable text (HTML tags stripped), for error reports."""
    if body is None:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    if _looks_like_html(text):
        text = _TAG.sub(" ", text)
    return _SPACE.sub(" ", text).strip()[:limit]


def _looks_like_html(text: str) -> bool:
    head = text.lstrip()[:200].lower()
    return head.startswith("<!doctype html") or head.startswith("<html") or "<body" in head


def describe_body(body: bytes | str | None) -> str:
    """A short description of an error body: the JSON message, 'an HTML page', or 'not JSON'."""
    if not body:
        return "an empty body"
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    if _looks_like_html(text):
        return f"an HTML page ({body_excerpt(text, 120)!r})"
    try:
        parsed = json.loads(text)
    except ValueError:
        return f"a body that is not JSON ({body_excerpt(text, 120)!r})"
    if isinstance(parsed, dict):
        message = parsed.get("message") or parsed.get("error") or parsed.get("detail")
        if message:
            return f"the message {str(message)[:200]!r}"
    return f"JSON {body_excerpt(text, 120)}"


def error_for_status(
    status: int,
    body: bytes | str | None,
    headers: Mapping[str, str] | None,
    *,
    what: str,
) -> CrmError:
    """Classify a non-2xx HTTP answer: 429, 408, 425 and 5xx are retryable (with the
    Retry-After hint), any other status permanent. ``what`` names the call in the reason."""
    excerpt = body_excerpt(body)
    reason = f"{what}: HTTP {status} with {describe_body(body)}"
    if status in _RETRYABLE_STATUSES or status >= 500:
        retry_after = None
        if headers is not None:
            lowered = {str(k).lower(): v for k, v in headers.items()}
            retry_after = parse_retry_after(lowered.get("retry-after"))
        return RetryableCrmError(
            reason, retry_after=retry_after, status_code=status, body_excerpt=excerpt
        )
    return PermanentCrmError(reason, status_code=status, body_excerpt=excerpt)


def _require(decision: Mapping[str, Any], *fields: str) -> None:
    missing = [f for f in fields if decision.get(f) in (None, "")]
    if missing:
        raise PermanentCrmError(f"decision is missing {', '.join(missing)}: cannot create a task")


def task_subject(decision: Mapping[str, Any]) -> str:
    """The human-readable task title a CRM user sees."""
    return f"Next best action: {decision['action']} for {decision['contact_id']}"


# -- LocalCrm ------------------------------------------------------------------------------


def _task_time(decision: Mapping[str, Any]) -> str:
    """When the local CRM records a task: the decision's own time (UTC, ISO seconds).

    The embedded CRM lives on the clock of the world that feeds it: the simulator applies the
    tasks created before the end of each simulated day, so a task must carry the simulated
    time of its decision, not the wall clock. Without a usable decided_at, the wall clock."""
    value = decision.get("decided_at")
    try:
        stamp = datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        stamp = None
    if stamp is None:
        stamp = datetime.now(UTC)
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(UTC).replace(tzinfo=None)
    return stamp.isoformat(timespec="seconds")


class LocalCrm:
    """The embedded local CRM (SQLite, schema :data:`CRM_DDL`). ``tasks.decision_id`` is
    UNIQUE, so ``INSERT OR IGNORE`` plus a read-back returns the same task on every repeat.

    Each thread keeps one connection (reopened after a fork), in WAL mode with a busy timeout
    so the simulator and several dispatchers can write at once."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 30_000) -> None:
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        con = self._connect()
        con.execute("PRAGMA journal_mode = WAL")  # persistent: set once for the file
        con.executescript(CRM_DDL)

    def _connect(self) -> sqlite3.Connection:
        cached = getattr(self._local, "connection", None)
        if cached is not None and cached[0] == os.getpid():
            return cached[1]
        con = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000)
        con.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        # WAL + NORMAL survives a process crash; only an OS crash can lose the last commits.
        con.execute("PRAGMA synchronous = NORMAL")
        self._local.connection = (os.getpid(), con)
        return con

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        cached = getattr(self._local, "connection", None)
        if cached is not None:
            cached[1].close()
            self._local.connection = None

    def create_task(self, decision: Mapping[str, Any], idempotency_key: str) -> CrmResult:
        """Insert the task for ``decision`` unless one with this key exists; return its id."""
        _require(decision, "contact_id", "action")
        body = canonical_json(dict(decision)).decode()
        created_at = _task_time(decision)
        con = self._connect()
        try:
            with con:
                con.execute(
                    "INSERT OR IGNORE INTO tasks "
                    "(decision_id, contact_id, action, subject, body, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        idempotency_key,
                        str(decision["contact_id"]),
                        str(decision["action"]),
                        task_subject(decision),
                        body,
                        created_at,
                    ),
                )
                row = con.execute(
                    "SELECT task_id FROM tasks WHERE decision_id = ?", (idempotency_key,)
                ).fetchone()
        except sqlite3.OperationalError as exc:  # locked beyond the busy timeout, disk trouble
            raise RetryableCrmError(f"local CRM unavailable: {exc}") from exc
        return CrmResult(external_id=str(row[0]))

    def task_count(self) -> int:
        """How many tasks the local CRM holds (for checks and reports)."""
        return self._connect().execute("SELECT count(*) FROM tasks").fetchone()[0]


# -- WebhookCrm ----------------------------------------------------------------------------


class WebhookCrm:
    """POSTs each decision as signed JSON to ``url``.

    Request: body ``{"decision_id", "contact_id", "action", "decision": {...}}`` (canonical
    JSON), headers ``Idempotency-Key: <decision_id>`` and ``X-Journey-Signature:
    sha256=<HMAC-SHA256 of the body with secret>``. The receiver must deduplicate on the key.
    A 2xx answer may carry ``{"id": ...}`` (or ``external_id``/``task_id``); an empty 2xx
    answer uses the key itself as the external id."""

    def __init__(
        self,
        url: str,
        secret: str | bytes,
        timeout: float = 10.0,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not secret:
            raise ValueError("WebhookCrm needs a signing secret")
        self.url = url
        self.secret = secret
        self.timeout = timeout
        self._client = httpx.Client(timeout=httpx.Timeout(timeout), transport=transport)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def create_task(self, decision: Mapping[str, Any], idempotency_key: str) -> CrmResult:
        """POST the decision; map the answer to a :class:`CrmResult` or a typed error."""
        _require(decision, "contact_id", "action")
        body = canonical_json(
            {
                "decision_id": idempotency_key,
                "contact_id": decision["contact_id"],
                "action": decision["action"],
                "decision": dict(decision),
            }
        )
        headers = {
            "Content-Type": "application/json",
            IDEMPOTENCY_HEADER: idempotency_key,
            SIGNATURE_HEADER: sign_body(body, self.secret),
        }
        what = f"webhook POST {self.url}"
        try:
            response = self._client.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise RetryableCrmError(f"{what}: timed out after {self.timeout}s ({exc!r})") from exc
        except httpx.TransportError as exc:
            raise RetryableCrmError(f"{what}: connection failed ({exc!r})") from exc
        if not 200 <= response.status_code < 300:
            raise error_for_status(
                response.status_code, response.content, response.headers, what=what
            )
        if not response.content.strip():
            return CrmResult(external_id=idempotency_key)
        try:
            answer = response.json()
        except ValueError as exc:
            # The receiver may have stored the task; the retry is safe because it dedups.
            raise RetryableCrmError(
                f"{what}: HTTP {response.status_code} with {describe_body(response.content)}",
                status_code=response.status_code,
                body_excerpt=body_excerpt(response.content),
            ) from exc
        external_id = None
        if isinstance(answer, dict):
            external_id = next(
                (answer[k] for k in ("id", "external_id", "task_id") if answer.get(k) is not None),
                None,
            )
        return CrmResult(
            external_id=str(external_id) if external_id is not None else idempotency_key
        )


# -- HubSpotCrm ----------------------------------------------------------------------------


class HubSpotCrm:
    """A HubSpot task per decision, associated with the contact, via ``hubspot-api-client``.

    Idempotency: HubSpot has no idempotency header, so each decision id is stored on the task
    in the custom property ``journey_decision_id`` (create it once in the portal; making it a
    unique-value property also lets HubSpot reject duplicates with 409). Before creating, the
    adapter searches tasks by that property and returns the existing task if there is one.
    The task is created with its contact association in the same request, so there is never a
    task without its contact. ``decision['contact_id']`` must be the HubSpot contact id.

    HubSpot's search index lags writes by a few seconds; the outbox's backoff gives it that
    time before a retry searches again."""

    def __init__(
        self,
        access_token: str,
        base_url: str = HUBSPOT_DEFAULT_BASE_URL,
        *,
        timeout: float = 10.0,
        decision_property: str = HUBSPOT_DECISION_PROPERTY,
    ) -> None:
        import hubspot
        from urllib3.util.retry import Retry

        if not access_token:
            raise ValueError("HubSpotCrm needs an access token")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.decision_property = decision_property
        # The outbox owns retries (with backoff and Retry-After); urllib3 must not add its own.
        self._client = hubspot.Client.create(
            access_token=access_token, host=self.base_url, retry=Retry(total=0, redirect=0)
        )
        self._tasks = self._client.crm.objects.tasks

    def find_task(self, idempotency_key: str) -> str | None:
        """The id of the task carrying this decision id, or None."""
        from hubspot.crm.objects.tasks import Filter, FilterGroup, PublicObjectSearchRequest

        request = PublicObjectSearchRequest(
            filter_groups=[
                FilterGroup(
                    filters=[
                        Filter(
                            property_name=self.decision_property,
                            operator="EQ",
                            value=idempotency_key,
                        )
                    ]
                )
            ],
            properties=[self.decision_property],
            limit=2,
        )
        page = self._call(
            "HubSpot task search",
            lambda: self._tasks.search_api.do_search(
                public_object_search_request=request, _request_timeout=self.timeout
            ),
        )
        results = getattr(page, "results", None)
        if results is None:
            raise _unreadable("HubSpot task search", page)
        # More than one match can only come from writes outside this adapter; the oldest wins.
        ids = sorted((str(r.id) for r in results), key=lambda i: (len(i), i))
        return ids[0] if ids else None

    def create_task(self, decision: Mapping[str, Any], idempotency_key: str) -> CrmResult:
        """Return the existing task for ``idempotency_key`` or create one on the contact."""
        from hubspot.crm.objects.tasks import (
            AssociationSpec,
            PublicAssociationsForObject,
            PublicObjectId,
            SimplePublicObjectInputForCreate,
        )

        _require(decision, "contact_id", "action")
        existing = self.find_task(idempotency_key)
        if existing is not None:
            return CrmResult(external_id=existing)
        properties = {
            "hs_task_subject": task_subject(decision),
            "hs_task_body": canonical_json(dict(decision)).decode(),
            "hs_task_status": "NOT_STARTED",
            "hs_timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            self.decision_property: idempotency_key,
        }
        request = SimplePublicObjectInputForCreate(
            properties=properties,
            associations=[
                PublicAssociationsForObject(
                    to=PublicObjectId(id=str(decision["contact_id"])),
                    types=[
                        AssociationSpec(
                            association_category="HUBSPOT_DEFINED",
                            association_type_id=HUBSPOT_TASK_TO_CONTACT,
                        )
                    ],
                )
            ],
        )
        try:
            created = self._call(
                "HubSpot task create",
                lambda: self._tasks.basic_api.create(
                    simple_public_object_input_for_create=request, _request_timeout=self.timeout
                ),
            )
        except PermanentCrmError as exc:
            if exc.status_code != 409:
                raise
            # A unique-value property refused a duplicate: the task exists, find it.
            existing = self.find_task(idempotency_key)
            if existing is None:
                raise RetryableCrmError(
                    "HubSpot refused a duplicate task that search cannot see yet",
                    status_code=409,
                    body_excerpt=exc.body_excerpt,
                ) from exc
            return CrmResult(external_id=existing)
        task_id = getattr(created, "id", None)
        if not task_id:
            # The task may exist; the retry searches before creating, so it is safe.
            raise _unreadable("HubSpot task create", created)
        return CrmResult(external_id=str(task_id))

    def _call(self, what: str, call: Any) -> Any:
        """Run one SDK call and translate every failure into a typed CRM error."""
        import urllib3
        from hubspot.crm.objects.tasks import ApiException

        try:
            return call()
        except ApiException as exc:
            if exc.status is None or exc.status == 0:
                raise RetryableCrmError(f"{what}: {exc.reason}") from exc
            raise error_for_status(
                exc.status, exc.body, dict(exc.headers or {}), what=what
            ) from exc
        except urllib3.exceptions.HTTPError as exc:
            # Timeouts, refused connections and dropped connections (MaxRetryError wraps them).
            cause = getattr(exc, "reason", None) or exc
            # NewConnectionError subclasses ConnectTimeoutError in urllib3 2: test it first.
            if isinstance(cause, urllib3.exceptions.NewConnectionError):
                kind = "failed"
            elif isinstance(cause, urllib3.exceptions.TimeoutError):
                kind = "timed out"
            else:
                kind = "failed"
            raise RetryableCrmError(f"{what}: connection {kind} ({cause!r})") from exc
        except (ValueError, TypeError, AttributeError) as exc:
            # The SDK could not turn a 2xx answer into its model: garbage JSON or an HTML page.
            raise RetryableCrmError(f"{what}: unreadable answer ({exc})") from exc


def _unreadable(what: str, answer: Any) -> RetryableCrmError:
    """A 2xx answer the SDK could not read as a HubSpot object (it hands back the raw text)."""
    text = answer if isinstance(answer, str | bytes) else repr(answer)
    return RetryableCrmError(
        f"{what}: HTTP 2xx with {describe_body(text)}", body_excerpt=body_excerpt(text)
    )


# -- factory -------------------------------------------------------------------------------


def _setting(settings: Settings, name: str, env_name: str) -> str | None:
    """A CRM setting's value (``env_name`` is the variable it comes from, for messages)."""
    value = getattr(settings, name, None)
    return str(value) if value else None


def crm_from_settings(settings: Settings, kind: str | None = None, **overrides: Any) -> CrmAdapter:
    """Build the CRM adapter for ``kind`` ('local', 'webhook' or 'hubspot').

    ``kind`` defaults to the settings' ``crm_kind`` (``JOURNEY_CRM``), else 'local'. The local
    CRM lives at ``settings.crm_path``; the webhook needs ``url`` and ``secret``
    (``JOURNEY_CRM_WEBHOOK_URL``, ``JOURNEY_CRM_WEBHOOK_SECRET``) and HubSpot an
    ``access_token`` (``JOURNEY_HUBSPOT_TOKEN``, optional ``JOURNEY_HUBSPOT_BASE_URL``);
    keyword ``overrides`` win over the settings. A missing value is a clear ``ValueError``."""
    kind = (kind or _setting(settings, "crm_kind", "JOURNEY_CRM") or "local").lower()
    if kind not in CRM_KINDS:
        raise ValueError(f"unknown CRM kind {kind!r}; use one of {', '.join(CRM_KINDS)}")
    timeout = float(overrides.get("timeout", 10.0))
    if kind == "local":
        return LocalCrm(overrides.get("path", settings.crm_path))
    if kind == "webhook":
        url = overrides.get("url") or _setting(
            settings, "crm_webhook_url", "JOURNEY_CRM_WEBHOOK_URL"
        )
        secret = overrides.get("secret") or _setting(
            settings, "crm_webhook_secret", "JOURNEY_CRM_WEBHOOK_SECRET"
        )
        if not url or not secret:
            raise ValueError(
                "the webhook CRM needs JOURNEY_CRM_WEBHOOK_URL and JOURNEY_CRM_WEBHOOK_SECRET"
            )
        return WebhookCrm(url, secret, timeout)
    token = overrides.get("access_token") or _setting(
        settings, "hubspot_access_token", "JOURNEY_HUBSPOT_TOKEN"
    )
    if not token:
        raise ValueError("the HubSpot CRM needs JOURNEY_HUBSPOT_TOKEN (a private app token)")
    base_url = (
        overrides.get("base_url")
        or _setting(settings, "hubspot_base_url", "JOURNEY_HUBSPOT_BASE_URL")
        or HUBSPOT_DEFAULT_BASE_URL
    )
    return HubSpotCrm(token, base_url, timeout=timeout)
