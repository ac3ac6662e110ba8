"""A fake HubSpot: a real HTTP server on 127.0.0.1 speaking the part of the CRM v3 API that
``hubspot-api-client`` uses for tasks (create with associations, search, read, v4
association listing), and misbehaving on purpose when told to.

Faults are queued with :meth:`FakeHubSpot.inject` and consumed by the matching requests:
429 with Retry-After, 500, HTML error pages, garbage JSON, slow answers (client timeouts),
and answers that fail *after* the write was committed (the case idempotency is for).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HTML_ERROR_PAGE = (
    "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    "<body><h1>Bad Gateway</h1><p>The upstream server is unavailable.</p></body></html>"
)
GARBAGE_JSON = '{"id": "17", "properties": {"hs_task_subject": "trunc'


@dataclass
class Fault:
    """One scripted misbehaviour.

    ``op``: 'create', 'search', or '*'. ``status``: HTTP status to answer. ``body``: 'json'
    (a HubSpot-style error), 'html' (an HTML error page), 'garbage' (broken JSON) or
    'empty' (an empty search result, as from a search index lagging behind writes).
    ``commit``: perform the real operation first, then answer with the fault. ``delay_s``:
    wait before answering (longer than the client's timeout simulates a timeout).
    ``retry_after``: value of the Retry-After header. ``times``: how many requests it hits.
    ``contact_id``: only creates associating this contact."""

    op: str = "create"
    status: int = 500
    body: str = "json"
    commit: bool = False
    delay_s: float = 0.0
    retry_after: str | None = None
    times: int = 1
    contact_id: str | None = None


@dataclass
class FakeTask:
    id: str
    properties: dict[str, str]
    contact_ids: list[str]
    created_at: str


@dataclass
class RequestRecord:
    op: str
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    fault: Fault | None = None
    received_at: float = field(default_factory=time.monotonic)


class FakeHubSpot:
    """Start with :meth:`start` (or as a context manager); ``base_url`` is then set."""

    def __init__(
        self,
        access_token: str = "pat-test-token",
        contacts: set[str] | None = None,
        *,
        unique_property: str | None = None,
    ) -> None:
        self.access_token = access_token
        self.contacts = set(contacts or ())
        self.unique_property = unique_property
        self.tasks: dict[str, FakeTask] = {}
        self.requests: list[RequestRecord] = []
        self._faults: list[Fault] = []
        self._ids = itertools.count(9001)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    # -- control ----------------------------------------------------------------------------

    def start(self) -> FakeHubSpot:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                fake._handle(self, "GET")

            def do_POST(self) -> None:
                fake._handle(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), daemon=True
        )
        self._thread.start()
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHubSpot:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def inject(self, fault: Fault | None = None, **kwargs: Any) -> Fault:
        """Queue a fault (a :class:`Fault` or its fields as keywords)."""
        fault = fault or Fault(**kwargs)
        with self._lock:
            self._faults.append(fault)
        return fault

    def tasks_for(self, decision_id: str, prop: str = "journey_decision_id") -> list[FakeTask]:
        with self._lock:
            return [t for t in self.tasks.values() if t.properties.get(prop) == decision_id]

    def ops(self) -> list[str]:
        with self._lock:
            return [r.op for r in self.requests]

    # -- protocol ---------------------------------------------------------------------------

    def _take_fault(self, op: str, body: Any) -> Fault | None:
        contact_ids = _association_targets(body) if op == "create" else []
        with self._lock:
            for fault in self._faults:
                if fault.op not in (op, "*") or fault.times <= 0:
                    continue
                if fault.contact_id is not None and fault.contact_id not in contact_ids:
                    continue
                fault.times -= 1
                return fault
        return None

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        path = handler.path.split("?", 1)[0]
        op = _operation(method, path)
        fault = self._take_fault(op, body)
        with self._lock:
            self.requests.append(
                RequestRecord(op, method, handler.path, dict(handler.headers.items()), body, fault)
            )
        if handler.headers.get("Authorization") != f"Bearer {self.access_token}":
            self._send(handler, 401, _error("Authentication credentials not found.", "AUTH"))
            return
        if fault is not None and not fault.commit:
            self._answer_fault(handler, fault)
            return
        status, answer = self._perform(op, path, body)
        if fault is not None:  # committed, then the answer is lost or broken
            self._answer_fault(handler, fault)
            return
        self._send(handler, status, answer)

    def _perform(self, op: str, path: str, body: Any) -> tuple[int, Any]:
        if op == "create":
            return self._create(body or {})
        if op == "search":
            return self._search(body or {})
        if op == "get":
            task = self.tasks.get(path.rstrip("/").rsplit("/", 1)[-1])
            if task is None:
                return 404, _error("resource not found", "OBJECT_NOT_FOUND")
            return 200, _task_json(task)
        if op == "associations":
            task = self.tasks.get(path.split("/")[5])
            if task is None:
                return 404, _error("resource not found", "OBJECT_NOT_FOUND")
            return 200, {
                "results": [
                    {
                        "toObjectId": int(c) if c.isdigit() else c,
                        "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": 204}],
                    }
                    for c in task.contact_ids
                ]
            }
        return 404, _error(f"no route for {path}", "NOT_FOUND")

    def _create(self, body: dict[str, Any]) -> tuple[int, Any]:
        properties = {k: str(v) for k, v in (body.get("properties") or {}).items()}
        if not properties.get("hs_timestamp"):
            return 400, _error(
                "Property values were not valid: hs_timestamp is required", "VALIDATION_ERROR"
            )
        contact_ids = _association_targets(body)
        unknown = [c for c in contact_ids if c not in self.contacts]
        if unknown:
            return 400, _error(
                f"One or more associations are invalid: contact {', '.join(unknown)} does not exist",
                "VALIDATION_ERROR",
            )
        with self._lock:
            if self.unique_property and any(
                t.properties.get(self.unique_property) == properties.get(self.unique_property)
                for t in self.tasks.values()
            ):
                return 409, _error(
                    f"A task with the value {properties.get(self.unique_property)!r} already "
                    f"exists for the unique property {self.unique_property!r}",
                    "CONFLICT",
                )
            task_id = str(next(self._ids))
            now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            task = FakeTask(task_id, {**properties, "hs_object_id": task_id}, contact_ids, now)
            self.tasks[task_id] = task
        return 201, _task_json(task)

    def _search(self, body: dict[str, Any]) -> tuple[int, Any]:
        groups = body.get("filterGroups") or []
        wanted = body.get("properties") or []
        with self._lock:
            matches = [t for t in self.tasks.values() if _matches(t, groups)]
        limit = int(body.get("limit") or 10)
        results = [_task_json(t, wanted) for t in matches[:limit]]
        return 200, {"total": len(matches), "results": results}

    def _answer_fault(self, handler: BaseHTTPRequestHandler, fault: Fault) -> None:
        if fault.delay_s:
            time.sleep(fault.delay_s)
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        if fault.body == "html":
            self._send(handler, fault.status, HTML_ERROR_PAGE, headers, "text/html")
        elif fault.body == "empty":  # a search index that has not caught up yet
            self._send(handler, fault.status, {"total": 0, "results": []}, headers)
        elif fault.body == "garbage":
            self._send(handler, fault.status, GARBAGE_JSON, headers)
        elif fault.status == 429:
            message = _error("You have reached your secondly limit.", "RATE_LIMIT")
            self._send(handler, 429, {**message, "policyName": "SECONDLY"}, headers)
        else:
            self._send(handler, fault.status, _error("internal error", "INTERNAL_ERROR"), headers)

    def _send(
        self,
        handler: BaseHTTPRequestHandler,
        status: int,
        answer: Any,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout); the server side just moves on


def _operation(method: str, path: str) -> str:
    if method == "POST" and path.rstrip("/") == "/crm/v3/objects/tasks":
        return "create"
    if method == "POST" and path.rstrip("/") == "/crm/v3/objects/tasks/search":
        return "search"
    if method == "GET" and path.startswith("/crm/v4/objects/tasks/") and path.endswith("/contacts"):
        return "associations"
    if method == "GET" and path.startswith("/crm/v3/objects/tasks/"):
        return "get"
    return "unknown"


def _association_targets(body: Any) -> list[str]:
    if not isinstance(body, dict):
        return []
    return [str((a.get("to") or {}).get("id")) for a in body.get("associations") or []]


def _matches(task: FakeTask, groups: list[dict[str, Any]]) -> bool:
    def ok(f: dict[str, Any]) -> bool:
        value = task.properties.get(f.get("propertyName", ""))
        if f.get("operator") == "EQ":
            return value == str(f.get("value"))
        if f.get("operator") == "IN":
            return value in [str(v) for v in f.get("values") or []]
        return False

    return any(all(ok(f) for f in g.get("filters") or []) for g in groups) if groups else True


def _task_json(task: FakeTask, wanted: list[str] | None = None) -> dict[str, Any]:
    props = task.properties
    if wanted:
        keep = set(wanted) | {"hs_object_id"}
        props = {k: v for k, v in props.items() if k in keep}
    return {
        "id": task.id,
        "properties": props,
        "createdAt": task.created_at,
        "updatedAt": task.created_at,
        "archived": False,
    }


def _error(message: str, category: str) -> dict[str, Any]:
    return {
        "status": "error",
        "message": message,
        "correlationId": "6a1b2c3d-0000-4000-8000-000000000000",
        "category": category,
    }
