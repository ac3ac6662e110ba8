"""A tiny webhook receiver for the WebhookCrm tests: a real HTTP server on 127.0.0.1 that
verifies the HMAC signature, deduplicates by Idempotency-Key and can misbehave on demand."""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from journey_pipeline.act.crm import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify_signature


@dataclass
class ReceiverFault:
    """Answer the next ``times`` requests with ``status`` and ``body`` (raw text);
    ``commit`` stores the task first (the answer is then lost)."""

    status: int
    body: str = '{"error": "internal error"}'
    content_type: str = "application/json"
    retry_after: str | None = None
    commit: bool = False
    times: int = 1


class WebhookReceiver:
    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.tasks: dict[str, dict[str, Any]] = {}  # idempotency key -> stored task
        self.deliveries: list[dict[str, Any]] = []  # every request, valid or not
        self.faults: list[ReceiverFault] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                receiver._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/journey/tasks"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        raw = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        key = handler.headers.get(IDEMPOTENCY_HEADER)
        signature = handler.headers.get(SIGNATURE_HEADER)
        valid = verify_signature(raw, self.secret, signature)
        with self._lock:
            self.deliveries.append({"key": key, "valid_signature": valid, "body": raw})
            fault = next((f for f in self.faults if f.times > 0), None)
            if fault is not None:
                fault.times -= 1
        if not valid:
            self._send(handler, 401, '{"error": "bad signature"}')
            return
        if not key:
            self._send(handler, 400, '{"error": "Idempotency-Key header required"}')
            return
        if fault is not None and not fault.commit:
            self._send(handler, fault.status, fault.body, fault.content_type, fault.retry_after)
            return
        with self._lock:
            task = self.tasks.get(key)
            if task is None:
                task = {"id": f"T{next(self._ids)}", "payload": json.loads(raw)}
                self.tasks[key] = task
        if fault is not None:
            self._send(handler, fault.status, fault.body, fault.content_type, fault.retry_after)
            return
        self._send(handler, 200, json.dumps({"id": task["id"]}))

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler,
        status: int,
        body: str,
        content_type: str = "application/json",
        retry_after: str | None = None,
    ) -> None:
        data = body.encode()
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        if retry_after is not None:
            handler.send_header("Retry-After", retry_after)
        handler.end_headers()
        handler.wfile.write(data)
