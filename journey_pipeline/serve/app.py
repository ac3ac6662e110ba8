"""The HTTP decision API (FastAPI): ``journey serve``.

Endpoints:

- ``POST /v1/decisions`` ``{contact_id, trigger?: {id, type?}, context?: {feature: number}}``
  -> ``{decision_id, action, propensity, explanation, policy_version, fallback_reason, ...}``.
  The same contact and trigger give the same decision_id and the same answer. Without a
  trigger, one is derived from the contact and the context. ``context`` values (numeric
  model features) replace the stored ones for this decision.
- ``GET /healthz`` (the process is up), ``GET /readyz`` (503 until the feature store and the
  champion, or the explicit cold-start policy, are loaded), ``GET /metrics`` (Prometheus).

Choices a caller should know:

- An **unknown contact** is not an error: the policy's fallback decides ``no_offer`` with
  ``fallback_reason: "no_features"`` (200). So is a contact whose features cannot be read
  because the feature store is down (``feature_store_unavailable: <error>``).
- ``/v1/*`` needs ``Authorization: Bearer <key>`` with a key from ``JOURNEY_API_KEYS``
  (comma-separated); with no key configured every ``/v1`` request is refused. Probes and
  metrics are open. Keys are compared in constant time and never logged.
- Every error is ``{"error": {"code", "message", "details"}}``: 400 ``malformed_json``,
  401 ``unauthorized``, 413 ``payload_too_large`` (bodies over 64 KiB), 415
  ``unsupported_media_type`` (not ``application/json``), 422 ``invalid_request``,
  503 ``not_ready`` / ``decision_failed``.

Concurrent requests are decided together: a single worker thread takes whatever requests are
waiting and decides them in one feature lookup and one policy call, so the per-request
overhead of Feast and pandas is paid once per batch under load.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import os
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Literal

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException

from journey_pipeline.actions import ACTION_NAMES
from journey_pipeline.serve.core import (
    CONTEXT_FEATURES,
    DecisionFailed,
    DecisionRequest,
    DecisionService,
    ServiceConfig,
    ServiceNotReady,
)
from journey_pipeline.settings import Settings, load_settings

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
API_KEYS_ENV = "JOURNEY_API_KEYS"
PROTECTED_PREFIX = "/v1/"
_JSON_TYPES = ("application/json",)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# ----------------------------------------------------------------------------- models
class Trigger(BaseModel):
    """What caused the decision: the trigger event's id (the idempotency key with the
    contact) and optionally its type."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str = Field(min_length=1, max_length=256, description="Trigger event id.")
    type: str | None = Field(
        None, min_length=1, max_length=128, description="e.g. cart.abandoned; default api.request."
    )


DecisionContext = create_model(  # type: ignore[call-overload]
    "DecisionContext",
    __config__=ConfigDict(extra="forbid", strict=True, allow_inf_nan=False),
    __doc__="Request-time values of numeric model features; they replace stored values.",
    **{name: (float | None, None) for name in CONTEXT_FEATURES},
)


class DecisionRequestBody(BaseModel):
    """A decision request."""

    model_config = ConfigDict(extra="forbid", strict=True)

    contact_id: str = Field(min_length=1, max_length=256, description="The CRM contact id.")
    trigger: Trigger | None = None
    context: DecisionContext | None = None  # type: ignore[valid-type]


class Contribution(BaseModel):
    """One feature's contribution to the chosen action's expected margin."""

    feature: str
    contribution: float


class DecisionAnswer(BaseModel):
    """The decision, as logged (``decision_id`` is the CRM idempotency key)."""

    decision_id: str
    contact_id: str
    trigger_event_id: str
    action: Literal[tuple(ACTION_NAMES)]  # type: ignore[valid-type]
    propensity: float = Field(gt=0, le=1)
    explanation: list[Contribution]
    policy_version: str
    model_version: str | None
    holdout: bool
    rules_applied: list[str]
    fallback_reason: str | None = Field(
        description="Why a fallback decided: no_features (unknown contact or no feature row), "
        "feature_store_unavailable: <error>, model_error: <error>; null otherwise."
    )
    mode: Literal["live", "shadow"]
    decided_at: datetime


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable error code.")
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorBody(BaseModel):
    """Every error response."""

    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    feature_store: bool
    policy: bool
    policy_version: str | None = None
    model_version: str | None = None
    detail: dict[str, str] = Field(default_factory=dict)


def _error_response(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def _documented(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "Malformed JSON.",
        401: "Missing or unknown API key.",
        413: f"Body larger than {MAX_BODY_BYTES} bytes.",
        415: "Content type is not application/json.",
        422: "The body does not match the schema.",
        503: "Not ready (no feature store or policy yet) or the policy failed.",
    }
    return {code: {"model": ErrorBody, "description": described[code]} for code in codes}


# ------------------------------------------------------------------------ API keys
def api_keys_from_env(env: Mapping[str, str] | None = None) -> frozenset[str]:
    """The API keys in ``JOURNEY_API_KEYS`` (comma-separated, blanks ignored)."""
    env = os.environ if env is None else env
    return frozenset(k.strip() for k in env.get(API_KEYS_ENV, "").split(",") if k.strip())


def key_allowed(header: str | None, keys: frozenset[str]) -> bool:
    """Whether an ``Authorization`` header carries one of ``keys`` as a Bearer token
    (constant-time comparison against every key)."""
    if not header or not keys:
        return False
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    token_bytes = token.strip().encode()
    allowed = False
    for key in keys:
        allowed |= hmac.compare_digest(token_bytes, key.encode())
    return allowed


class RequestGuard:
    """ASGI middleware in front of ``/v1/``: API key (401), then for bodies the content type
    (415) and size (413, from Content-Length or while reading a chunked body). The body is
    read here, bounded, and replayed to the application."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: frozenset[str],
        max_body_bytes: int = MAX_BODY_BYTES,
        on_reject: Callable[[str], None] | None = None,
    ) -> None:
        self.app = app
        self.keys = keys
        self.max_body_bytes = max_body_bytes
        self.on_reject = on_reject or (lambda code: None)

    async def _reject(self, send: Send, scope: Scope, response: JSONResponse, code: str) -> None:
        self.on_reject(code)
        await response(scope, self._no_receive, send)

    @staticmethod
    async def _no_receive() -> Message:
        return {"type": "http.disconnect"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not key_allowed(headers.get("authorization"), self.keys):
            response = _error_response(
                401,
                "unauthorized",
                "send a valid API key as 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await self._reject(send, scope, response, "unauthorized")
            return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in _JSON_TYPES:
            response = _error_response(
                415,
                "unsupported_media_type",
                f"send the body as application/json, not {media_type or 'no content type'!r}",
            )
            await self._reject(send, scope, response, "unsupported_media_type")
            return
        too_large = _error_response(
            413, "payload_too_large", f"the body exceeds {self.max_body_bytes} bytes"
        )
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._reject(send, scope, too_large, "payload_too_large")
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._reject(send, scope, too_large, "payload_too_large")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# --------------------------------------------------------------------------- batcher
class DecisionBatcher:
    """Hands concurrent requests to :meth:`DecisionService.decide_many` in batches.

    One worker thread takes everything waiting (up to ``max_batch``) and decides it at once;
    under light load a batch is one request, so nothing waits for company."""

    def __init__(self, service: DecisionService, *, max_batch: int = 256) -> None:
        self.service = service
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="journey-decision-batcher", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Finish the requests already queued, then stop the worker."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=60)
            self._thread = None

    async def decide(self, request: DecisionRequest) -> dict[str, Any]:
        """The answer to one request, decided in the next batch."""
        self.start()  # apps driven without a lifespan (test clients) start it here
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._queue.put((request, future, loop))
        return await future

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._decide(batch)
            if stop:
                return

    def _decide(self, batch: Sequence[tuple[DecisionRequest, asyncio.Future, Any]]) -> None:
        try:
            answers: Sequence[Any] = self.service.decide_many([item[0] for item in batch])
            failure: BaseException | None = None
        except Exception as exc:  # handed to every waiting request, turned into 4xx/5xx there
            answers, failure = [None] * len(batch), exc
        for (_, future, loop), answer in zip(batch, answers, strict=True):
            loop.call_soon_threadsafe(_settle, future, answer, failure)


def _settle(future: asyncio.Future, answer: Any, failure: BaseException | None) -> None:
    if future.done():  # the client went away
        return
    if failure is not None:
        future.set_exception(failure)
    else:
        future.set_result(answer)


# ----------------------------------------------------------------------------- app
def create_app(
    settings: Settings,
    service: DecisionService | None = None,
    *,
    config: ServiceConfig | None = None,
    api_keys: frozenset[str] | set[str] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_batch: int = 256,
) -> FastAPI:
    """The decision API over ``service`` (default: a new :class:`DecisionService` for
    ``settings`` with ``config``, or :meth:`ServiceConfig.from_env`).

    ``api_keys`` default to ``JOURNEY_API_KEYS``. The app's lifespan starts the service
    (loading in the background, so ``/healthz`` answers at once) and, on shutdown, stops
    taking batches and drains the service: buffered decisions are written, the outbox
    dispatched.
    """
    if service is None:
        service = DecisionService(settings, config or ServiceConfig.from_env(os.environ))
    keys = frozenset(api_keys) if api_keys is not None else api_keys_from_env()
    if not keys:
        logger.warning("no API keys configured (%s): every /v1 request is refused", API_KEYS_ENV)
    else:
        logger.info("%d API key(s) configured", len(keys))
    batcher = DecisionBatcher(service, max_batch=max_batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        loader: threading.Thread | None = None
        if not service.started:
            loader = threading.Thread(target=service.start, name="journey-service-loader")
            loader.start()
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()
            if loader is not None:
                loader.join()
            drained = await asyncio.to_thread(service.close)
            logger.info("decision service drained: %s", drained)

    app = FastAPI(
        title="journey-pipeline decision API",
        version="1",
        description=__doc__,
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.batcher = batcher
    metrics = service.metrics
    bearer = HTTPBearer(auto_error=False, description="An API key from JOURNEY_API_KEYS.")

    def count_error(code: str) -> None:
        metrics.errors.labels(code).inc()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        details = [
            {
                "loc": [str(part) for part in error.get("loc", ())],
                "type": str(error.get("type", "")),
                "msg": str(error.get("msg", "")),
            }
            for error in errors
        ]
        if any(error.get("type") == "json_invalid" for error in errors):
            count_error("malformed_json")
            return _error_response(400, "malformed_json", "the body is not valid JSON", details)
        count_error("invalid_request")
        return _error_response(
            422, "invalid_request", "the body does not match the request schema", details
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        count_error(code)
        return _error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)

    @app.post(
        "/v1/decisions",
        response_model=DecisionAnswer,
        responses=_documented(400, 401, 413, 415, 422, 503),
        summary="Decide the next best action for a contact",
    )
    async def decide(
        body: DecisionRequestBody,
        _credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    ) -> Any:
        started = time.perf_counter()
        context = body.context.model_dump(exclude_unset=True) if body.context else None
        request = DecisionRequest(
            contact_id=body.contact_id,
            trigger_event_id=body.trigger.id if body.trigger else None,
            trigger_type=body.trigger.type if body.trigger else None,
            context=context or None,
        )
        try:
            answer = await batcher.decide(request)
        except ServiceNotReady as exc:
            count_error("not_ready")
            return _error_response(503, "not_ready", f"the service is not ready: {exc}")
        except DecisionFailed as exc:
            return _error_response(503, "decision_failed", f"the policy failed: {exc}")
        metrics.latency.labels("http").observe(time.perf_counter() - started)
        return Response(orjson.dumps(answer), media_type="application/json")

    @app.get("/healthz", response_model=Health, summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "Not ready yet."}},
        summary="Readiness: feature store and policy loaded",
    )
    async def readyz() -> Any:
        served = service.served
        body = Readiness(
            status="ready" if service.ready else "not_ready",
            feature_store=service.state.feature_store,
            policy=served is not None,
            policy_version=served.policy.policy_version if served else None,
            model_version=served.model_version if served else None,
            detail=dict(service.state.detail),
        )
        return JSONResponse(body.model_dump(), status_code=200 if service.ready else 503)

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={
            200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}
        },
    )
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(
        RequestGuard, keys=keys, max_body_bytes=max_body_bytes, on_reject=count_error
    )
    return app


def run_server(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    log_level: str = "info",
    access_log: bool = False,
) -> None:
    """Serve the decision API with uvicorn until SIGINT/SIGTERM; shutdown drains the buffer."""
    import uvicorn

    app = create_app(settings)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=30,
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m journey_pipeline.serve.app --host H --port P``."""
    parser = argparse.ArgumentParser(description="Serve the journey-pipeline decision API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper())
    run_server(load_settings(), args.host, args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
