"""The real-time decision service shared by the HTTP API and the Kafka stream.

:class:`DecisionService` holds everything a real-time decision needs and nothing the batch
path does not already have: the Feast store (:func:`online_features`), the ``champion`` policy
(:func:`load_policy_model` wrapped in :meth:`DecisionPolicy.from_warehouse`), the decision-log
writer (:func:`append_decisions`) and the CRM outbox (:class:`Outbox`). It adds only what a
long-lived process needs around them:

- **Champion polling.** A background thread asks the registry for the alias every
  ``model_poll_s`` seconds and rebuilds the policy when the version moved; overrides, the kill
  switch, erasures, recent offers and whether a drift episode is open (the champion then
  explores more, as in the daily scoring) are re-read every ``controls_refresh_s`` seconds,
  never per request. The served policy is one immutable object replaced by a single assignment:
  a request reads it once, so requests in flight finish on the policy they started with.
- **Buffered writes.** The warehouse is a DuckDB file that Dagster runs write, so the service
  never holds it open: decisions are buffered in memory and flushed in small batches (open,
  write, close) by a background thread, and :meth:`close` drains the buffer. A flush puts the
  CRM-bound offers in the outbox first and then appends the decision log: a crash between the
  two leaves an outbox row whose decision is decided again (same decision_id) on replay,
  rather than a logged offer that never reaches the CRM.
- **Write-back.** A second background thread dispatches the outbox to the CRM adapter; the
  outbox's decision_id idempotency makes the CRM effect exactly-once.
- **Idempotent answers.** ``decision_id`` is uuid5(contact, trigger, policy version); the
  trigger id is the caller's or one derived from the request, and the answer for a
  decision_id is fixed by the first decision (kept in a bounded in-memory map here, and by the
  log's first-write-wins across restarts).
- **Per-decision cost.** Features come from the shared :class:`OnlineFeatureReader` (the reader
  behind :func:`online_features`, which asks the online store for the rows directly: the same
  keys and values as Feast's ``get_online_features``, without rebuilding the feature service
  and a response per call), as plain typed columns rather than a frame; the policy decides on
  those columns (:meth:`DecisionPolicy.decide_columns`, the same rules and model path as its
  ``decide``) and the answers are built column by column. :meth:`decide_many` decides any
  number of requests in one feature lookup and one policy call (the HTTP app hands it every
  request waiting, the stream a whole poll). The decision-log frame is built once per flush,
  in the background, never per request.
- **Failure is a decision.** When the feature store cannot be read (Redis down, registry
  missing), the policy's built-in no-features fallback decides (``no_offer``) and the
  ``fallback_reason`` says ``feature_store_unavailable: <error type>``; no exception escapes.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import Counter as Tally
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pandas as pd
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from journey_pipeline.act.crm import CrmAdapter, crm_from_settings
from journey_pipeline.act.outbox import DispatchSummary, Outbox
from journey_pipeline.actions import ACTION_NAMES
from journey_pipeline.decide.bandit import ContextualBandit
from journey_pipeline.decide.log import append_decisions, decision_ids
from journey_pipeline.decide.policy import (
    FALLBACK_NO_FEATURES,
    RULE_FALLBACK,
    DecisionPolicy,
    decisions_frame,
)
from journey_pipeline.decide.registry import CHAMPION, load_policy_model
from journey_pipeline.decide.scoring import exploring_during_drift
from journey_pipeline.features.contract import FEATURES, MODEL_FEATURES
from journey_pipeline.features.feature_store import build_store, online_features, online_reader
from journey_pipeline.settings import Settings
from journey_pipeline.warehouse import connect

logger = logging.getLogger(__name__)

# Fixed: changing it would change every derived trigger id, hence every decision id.
REQUEST_TRIGGER_NAMESPACE = uuid.UUID("0b7d3f52-3c1e-4f7a-9a55-2f3d9e1c6b80")
DEFAULT_TRIGGER_TYPE = "api.request"
FALLBACK_FEATURE_STORE = "feature_store_unavailable"
# Numeric features a caller may supply as request-time context (they win over stored values).
CONTEXT_FEATURES: tuple[str, ...] = tuple(MODEL_FEATURES)
ERROR_KINDS = (
    "malformed_json",
    "invalid_request",
    "unauthorized",
    "unsupported_media_type",
    "payload_too_large",
    "not_ready",
    "decision_failed",
    "feature_store",
    "flush_failed",
    "dispatch_failed",
    "policy_refresh_failed",
    "controls_refresh_failed",
)


class ServiceNotReady(RuntimeError):
    """No policy is loaded yet (no champion and no explicit cold start): retry later."""


class DecisionFailed(RuntimeError):
    """The policy could not decide for reasons other than the model or the features."""


def _env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    return float(raw) if raw not in (None, "") else default


def _env_flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class ServiceConfig:
    """Timing and behaviour of a :class:`DecisionService`.

    ``allow_cold_start``: serve the uniform cold-start policy while no champion exists
    (otherwise the service is not ready until one is promoted). ``mode``: 'live' (offers go
    to the CRM) or 'shadow' (logged only). ``recent_decisions``: how many answers are kept to
    repeat for the same decision_id.
    """

    model_poll_s: float = 5.0
    controls_refresh_s: float = 10.0
    flush_interval_s: float = 0.2
    flush_max_rows: int = 2000
    dispatch_interval_s: float = 0.2
    warehouse_timeout_s: float = 300.0
    controls_timeout_s: float = 5.0
    allow_cold_start: bool = False
    mode: str = "live"
    recent_decisions: int = 100_000

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ServiceConfig:
        """Read ``JOURNEY_SERVE_MODEL_POLL_S``, ``JOURNEY_SERVE_CONTROLS_REFRESH_S``,
        ``JOURNEY_SERVE_FLUSH_S``, ``JOURNEY_SERVE_DISPATCH_S``, ``JOURNEY_SERVE_COLD_START``
        and ``JOURNEY_SERVE_MODE`` (defaults as the fields)."""
        default = cls()
        return cls(
            model_poll_s=_env_float(env, "JOURNEY_SERVE_MODEL_POLL_S", default.model_poll_s),
            controls_refresh_s=_env_float(
                env, "JOURNEY_SERVE_CONTROLS_REFRESH_S", default.controls_refresh_s
            ),
            flush_interval_s=_env_float(env, "JOURNEY_SERVE_FLUSH_S", default.flush_interval_s),
            dispatch_interval_s=_env_float(
                env, "JOURNEY_SERVE_DISPATCH_S", default.dispatch_interval_s
            ),
            allow_cold_start=_env_flag(env, "JOURNEY_SERVE_COLD_START"),
            mode=env.get("JOURNEY_SERVE_MODE", default.mode) or default.mode,
        )


@dataclass(frozen=True)
class DecisionRequest:
    """One decision to take: for ``contact_id``, because of ``trigger_event_id`` (derived from
    the request when absent), with optional request-time ``context`` feature values."""

    contact_id: str
    trigger_event_id: str | None = None
    trigger_type: str | None = None
    context: Mapping[str, float | None] | None = None
    decided_at: datetime | None = None


def derived_trigger_id(contact_id: str, context: Mapping[str, Any] | None = None) -> str:
    """A deterministic trigger id for a request that names none: uuid5 of the contact and
    the context (canonical JSON), so repeating the request repeats the decision_id."""
    canonical = orjson.dumps(dict(context or {}), option=orjson.OPT_SORT_KEYS).decode()
    return str(uuid.uuid5(REQUEST_TRIGGER_NAMESPACE, f"request|{contact_id}|{canonical}"))


def decision_response(row: Mapping[str, Any]) -> dict[str, Any]:
    """A decision-log row as the service's answer: plain JSON values, JSON columns parsed."""

    def parsed(value: Any) -> Any:
        return orjson.loads(value) if isinstance(value, str) else value

    fallback = row.get("fallback_reason")
    model_version = row.get("model_version")
    return {
        "decision_id": str(row["decision_id"]),
        "contact_id": str(row["contact_id"]),
        "trigger_event_id": str(row["trigger_event_id"]),
        "action": str(row["action"]),
        "propensity": float(row["propensity"]),
        "explanation": parsed(row.get("explanation")) or [],
        "policy_version": str(row["policy_version"]),
        "model_version": None
        if model_version is None or pd.isna(model_version)
        else str(model_version),
        "holdout": bool(row["holdout"]),
        "rules_applied": parsed(row.get("rules_applied")) or [],
        "fallback_reason": None if fallback is None or pd.isna(fallback) else str(fallback),
        "mode": str(row["mode"]),
        "decided_at": pd.Timestamp(row["decided_at"]).tz_localize("UTC").isoformat(),
    }


def _missing(value: Any) -> bool:
    """None, NaN or pd.NA (what a null looks like in a decision-log column)."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def decision_responses(rows: pd.DataFrame | Mapping[str, Any]) -> list[dict[str, Any]]:
    """:func:`decision_response` of every row of a decision-log frame, or of the columns
    :meth:`DecisionPolicy.decide_columns` returns, column by column (the same dicts, without
    a per-row pass through pandas)."""
    if len(rows["decision_id"]) == 0:
        return []

    def values(name: str) -> list[Any]:
        column = rows[name]
        if isinstance(column, np.ndarray) and column.dtype.kind == "M":
            return list(column)  # numpy scalars: tolist() would give integer nanoseconds
        return column.tolist() if hasattr(column, "tolist") else list(column)

    def text_or_none(column: Sequence[Any]) -> list[str | None]:
        return [None if _missing(v) else str(v) for v in column]

    def parsed(column: Sequence[Any]) -> list[Any]:
        return [(orjson.loads(v) if isinstance(v, str) else v) or [] for v in column]

    def column(name: str, cast: Callable[[Any], Any]) -> list[Any]:
        return [cast(v) for v in values(name)]

    # Naive timestamps are UTC: written as pd.Timestamp(...).tz_localize("UTC").isoformat().
    decided_at = [
        stamp.tz_convert("UTC").isoformat() if stamp.tzinfo else f"{stamp.isoformat()}+00:00"
        for stamp in map(pd.Timestamp, values("decided_at"))
    ]
    columns = zip(
        column("decision_id", str),
        column("contact_id", str),
        column("trigger_event_id", str),
        column("action", str),
        column("propensity", float),
        parsed(values("explanation")),
        column("policy_version", str),
        text_or_none(values("model_version")),
        column("holdout", bool),
        parsed(values("rules_applied")),
        text_or_none(values("fallback_reason")),
        column("mode", str),
        decided_at,
        strict=True,
    )
    keys = (
        "decision_id",
        "contact_id",
        "trigger_event_id",
        "action",
        "propensity",
        "explanation",
        "policy_version",
        "model_version",
        "holdout",
        "rules_applied",
        "fallback_reason",
        "mode",
        "decided_at",
    )
    return [dict(zip(keys, values, strict=True)) for values in columns]


class ServiceMetrics:
    """Prometheus metrics of one service instance, in their own registry (so several
    instances in one process never collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram(
            "journey_decision_latency_seconds",
            "Time to answer one decision request (http) or decide one event (stream).",
            ["path"],
            buckets=(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.decisions = Counter(
            "journey_decisions",
            "Decisions taken, by action and mode.",
            ["action", "mode"],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "journey_decision_fallbacks",
            "Decisions taken by a fallback, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.errors = Counter(
            "journey_errors",
            f"Errors, by kind ({', '.join(ERROR_KINDS)}, or an HTTP error code).",
            ["kind"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "journey_decision_batch_size",
            "Requests decided together in one feature lookup and policy call.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )
        self.buffered = Gauge(
            "journey_decisions_buffered",
            "Decisions waiting to be written to the decision log.",
            registry=self.registry,
        )
        self.champion_version = Gauge(
            "journey_champion_version",
            "Registry version of the policy being served (0 under cold start).",
            registry=self.registry,
        )
        # Every known series exists from the start (a scrape sees zeros, not gaps).
        for path in ("http", "stream"):
            self.latency.labels(path)
        for action in ACTION_NAMES:
            for mode in ("live", "shadow"):
                self.decisions.labels(action, mode)
        for reason in (FALLBACK_NO_FEATURES, FALLBACK_FEATURE_STORE, "model_error"):
            self.fallbacks.labels(reason)
        for kind in ERROR_KINDS:
            self.errors.labels(kind)


@dataclass(frozen=True)
class ServedPolicy:
    """The policy being served and where it came from (replaced, never mutated)."""

    policy: DecisionPolicy
    model_version: str | None
    bandit: ContextualBandit | None
    controls_read_at: float


@dataclass
class ServiceState:
    """What readiness reports."""

    feature_store: bool = False
    policy: bool = False
    detail: dict[str, str] = field(default_factory=dict)


class DecisionService:
    """Real-time decisions over the shared feature store, policy, decision log and outbox.

    In: ``settings``; optionally a :class:`ServiceConfig`, and ready-made ``store`` (Feast),
    ``outbox`` and ``crm`` adapter (defaults from the settings). :meth:`start` loads what it
    can and starts the background threads; :meth:`decide` / :meth:`decide_many` answer;
    :meth:`close` stops the threads, flushes every buffered decision and dispatches.
    """

    def __init__(
        self,
        settings: Settings,
        config: ServiceConfig | None = None,
        *,
        store: Any = None,
        outbox: Outbox | None = None,
        crm: CrmAdapter | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.config = config or ServiceConfig()
        if self.config.mode not in ("live", "shadow"):
            raise ValueError(f"mode must be 'live' or 'shadow', got {self.config.mode!r}")
        self.metrics = ServiceMetrics()
        self._store = store
        self._outbox = outbox
        self._crm = crm
        self._clock = clock or (lambda: datetime.now(UTC))
        self._served: ServedPolicy | None = None
        self.state = ServiceState()
        self._buffer: list[dict[str, np.ndarray]] = []  # decide_columns output
        self._buffer_rows = 0
        self._buffer_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._dispatch_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._recent_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake_flush = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = False
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    @property
    def outbox(self) -> Outbox:
        if self._outbox is None:
            self._outbox = Outbox.from_settings(self.settings)
        return self._outbox

    @property
    def crm(self) -> CrmAdapter:
        if self._crm is None:
            self._crm = crm_from_settings(self.settings)
        return self._crm

    @property
    def ready(self) -> bool:
        """True once the feature store answered and a policy (champion or explicit cold
        start) is loaded."""
        return self.state.feature_store and self._served is not None

    @property
    def started(self) -> bool:
        """Whether :meth:`start` was called."""
        return self._started

    @property
    def served(self) -> ServedPolicy | None:
        """The policy currently served (None before the first load)."""
        return self._served

    def start(self, *, background: bool = True) -> DecisionService:
        """Load the feature store and the policy (failures are reported by readiness and
        retried by the poller), then start the poller, flusher and dispatcher threads."""
        self._started = True
        self.settings.ensure_dirs()
        self._load_feature_store()
        self.refresh_policy(force=True)
        if background:
            for name, target in (
                ("policy-poller", self._poll_loop),
                ("decision-flusher", self._flush_loop),
                ("outbox-dispatcher", self._dispatch_loop),
            ):
                thread = threading.Thread(target=target, name=f"journey-{name}", daemon=True)
                thread.start()
                self._threads.append(thread)
        return self

    def close(self) -> dict[str, int]:
        """Stop the background threads, write every buffered decision, dispatch the outbox
        once more; returns ``flushed`` and ``dispatched`` counts. Safe to call twice."""
        self._stop.set()
        self._wake_flush.set()
        for thread in self._threads:
            thread.join(timeout=60)
        self._threads.clear()
        flushed = self.flush()
        dispatched = 0
        if not self._closed and self.config.mode == "live":
            try:
                dispatched = self.dispatch().confirmed
            except Exception:
                self.metrics.errors.labels("dispatch_failed").inc()
                logger.exception("final outbox dispatch failed; rows stay pending for the next")
        self._closed = True
        return {"flushed": flushed, "dispatched": dispatched}

    def __enter__(self) -> DecisionService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- loading
    def _load_feature_store(self) -> None:
        try:
            if self._store is None:
                self._store = build_store(self.settings)
            # A lookup proves the registry holds the feature service and the online store
            # answers; an unknown contact comes back as an all-null row.
            online_features(self._store, ["__readiness_probe__"])
            self.state.feature_store = True
            self.state.detail.pop("feature_store", None)
        except Exception as exc:
            self.state.feature_store = False
            self.state.detail["feature_store"] = f"{type(exc).__name__}: {exc}"[:300]
            logger.warning("feature store not ready: %s", self.state.detail["feature_store"])

    def refresh_policy(self, *, force: bool = False) -> bool:
        """Poll the champion alias; rebuild the served policy when the version moved, when the
        controls are older than ``controls_refresh_s``, or when ``force``. Returns whether
        the served policy was replaced. Errors keep the current policy."""
        with self._refresh_lock:
            try:
                bandit, version = load_policy_model(CHAMPION, self.settings)
            except Exception as exc:
                self.metrics.errors.labels("policy_refresh_failed").inc()
                self.state.detail["policy"] = f"registry: {type(exc).__name__}: {exc}"[:300]
                logger.exception("could not read the champion from the registry")
                return False
            current = self._served
            if bandit is None and not self.config.allow_cold_start:
                if current is None:
                    self.state.detail["policy"] = (
                        "no champion in the registry (promote one, or set "
                        "JOURNEY_SERVE_COLD_START=1 to serve the cold-start policy)"
                    )
                return False
            stale = (
                current is None
                or time.monotonic() - current.controls_read_at >= self.config.controls_refresh_s
            )
            if not force and not stale and current is not None and current.model_version == version:
                return False
            self._served = self._build_policy(bandit, version, current)
            self.state.policy = True
            self.state.detail.pop("policy", None)
            self.metrics.champion_version.set(float(version) if version else 0.0)
            if current is None or current.model_version != version:
                logger.info("serving policy %s", self._served.policy.policy_version)
            return True

    def _build_policy(
        self, bandit: ContextualBandit | None, version: str | None, current: ServedPolicy | None
    ) -> ServedPolicy:
        """The policy with fresh controls from the warehouse, or, while the warehouse is
        locked by a writer for longer than ``controls_timeout_s``, the controls in force.
        While a drift episode is open the champion explores more, as in the daily scoring
        (:func:`~journey_pipeline.decide.scoring.exploring_during_drift`)."""
        try:
            bandit = exploring_during_drift(bandit, self.settings.reports_dir)
        except Exception as exc:
            # An unreadable drift history (being rewritten) keeps the champion as it is.
            logger.warning("drift history not read (%s); deciding with the champion", exc)
        try:
            con = connect(self.settings.warehouse_path, timeout_s=self.config.controls_timeout_s)
            try:
                policy = DecisionPolicy.from_warehouse(con, bandit, model_version=version)
            finally:
                con.close()
            read_at = time.monotonic()
        except Exception as exc:
            if current is None:
                raise
            self.metrics.errors.labels("controls_refresh_failed").inc()
            logger.warning("controls not refreshed (%s); keeping the previous ones", exc)
            old = current.policy
            policy = DecisionPolicy(
                bandit,
                model_version=version,
                overrides=old.overrides,
                autonomy=old.autonomy,
                erased_contacts=old.erased_contacts,
                last_offer_at=old.last_offer_at,
            )
            read_at = current.controls_read_at
        return ServedPolicy(policy, version, bandit, read_at)

    # ---------------------------------------------------------------- deciding
    def decide(
        self,
        contact_id: str,
        trigger: str | None = None,
        context: Mapping[str, float | None] | None = None,
        *,
        trigger_type: str | None = None,
    ) -> dict[str, Any]:
        """One decision (see :meth:`decide_many`); ``trigger`` is the trigger event id."""
        request = DecisionRequest(contact_id, trigger, trigger_type, context)
        return self.decide_many([request])[0]

    def decide_many(
        self, requests: Sequence[DecisionRequest], *, record: bool = True
    ) -> list[dict[str, Any]]:
        """Decide for each request, in order, with the policy served when the call began.

        Out: one answer per request (:func:`decision_response`). Decisions new to this process
        are buffered for the log and the outbox; with ``record=False`` nothing is kept,
        counted or sent (a probe of the path, e.g. the demo's latency measurement). Raises :class:`ServiceNotReady` without a
        policy, ``ValueError`` for a context naming an unknown feature, and
        :class:`DecisionFailed` if the policy itself fails.
        """
        served = self._served  # read once: the whole call uses this policy
        if served is None:
            raise ServiceNotReady(self.state.detail.get("policy", "no policy loaded yet"))
        if not requests:
            return []
        for request in requests:
            if request.context:
                unknown = sorted(set(request.context) - set(CONTEXT_FEATURES))
                if unknown:
                    raise ValueError(f"context names unknown features {unknown}")
        policy = served.policy
        trigger_ids = [
            r.trigger_event_id or derived_trigger_id(r.contact_id, r.context) for r in requests
        ]
        ids = decision_ids([r.contact_id for r in requests], trigger_ids, policy.policy_version)
        answers: list[dict[str, Any] | None] = [None] * len(requests)
        with self._recent_lock:
            for i, decision_id in enumerate(ids):
                known = self._recent.get(decision_id)
                if known is not None:
                    self._recent.move_to_end(decision_id)
                    answers[i] = known
        todo = [i for i, answer in enumerate(answers) if answer is None]
        if not record:
            return self._probe(policy, requests, trigger_ids, answers, todo)
        self.metrics.batch_size.observe(len(requests))
        # Two requests for one contact with different contexts cannot share a context frame.
        groups = _context_groups([requests[i] for i in todo])
        for group in groups:
            positions = [todo[g] for g in group]
            rows = self._decide_rows(
                policy, [requests[p] for p in positions], [trigger_ids[p] for p in positions]
            )
            responses = decision_responses(rows)
            with self._recent_lock:
                fresh = [r["decision_id"] not in self._recent for r in responses]
            self._count([r for r, new in zip(responses, fresh, strict=True) if new])
            if all(fresh):
                self._buffer_decisions(rows)
            else:
                keep = np.asarray(fresh, dtype=bool)
                self._buffer_decisions({name: column[keep] for name, column in rows.items()})
            for position, response in zip(positions, responses, strict=True):
                answers[position] = response
        with self._recent_lock:
            for i in todo:
                self._recent.setdefault(ids[i], answers[i])  # type: ignore[arg-type]
                # The first answer for a decision_id is the answer.
                answers[i] = self._recent[ids[i]]
            while len(self._recent) > self.config.recent_decisions:
                self._recent.popitem(last=False)
        return answers  # type: ignore[return-value]

    def _probe(
        self,
        policy: DecisionPolicy,
        requests: Sequence[DecisionRequest],
        trigger_ids: Sequence[str],
        answers: list[dict[str, Any] | None],
        todo: list[int],
    ) -> list[dict[str, Any]]:
        """:meth:`decide_many` with ``record=False``: the same path, nothing buffered."""
        for group in _context_groups([requests[i] for i in todo]):
            positions = [todo[g] for g in group]
            rows = self._decide_rows(
                policy, [requests[p] for p in positions], [trigger_ids[p] for p in positions]
            )
            for position, response in zip(positions, decision_responses(rows), strict=True):
                answers[position] = response
        return answers  # type: ignore[return-value]

    def _decide_rows(
        self,
        policy: DecisionPolicy,
        requests: Sequence[DecisionRequest],
        trigger_ids: Sequence[str],
    ) -> dict[str, np.ndarray]:
        """Decision-log columns (:meth:`DecisionPolicy.decide_columns`) of ``requests``."""
        contact_ids = [str(r.contact_id) for r in requests]
        store_error: str | None = None
        try:
            if self._store is None:
                raise RuntimeError("the feature store is not loaded")
            features = _feature_columns(online_reader(self._store).read_values(contact_ids))
        except Exception as exc:
            store_error = f"{FALLBACK_FEATURE_STORE}: {type(exc).__name__}"
            self.metrics.errors.labels("feature_store").inc()
            logger.warning(
                "feature lookup failed (%s: %s); deciding without features", type(exc).__name__, exc
            )
            features = _feature_columns({name: [None] * len(contact_ids) for name in FEATURES})
        _apply_request_context(features, contact_ids, requests)
        now = self._clock()
        decided_at = np.array(
            [pd.Timestamp(r.decided_at or now).value for r in requests], dtype="datetime64[ns]"
        )
        try:
            rows = policy.decide_columns(
                contact_ids,
                [str(t) for t in trigger_ids],
                decided_at,
                features,
                trigger_types=[r.trigger_type or DEFAULT_TRIGGER_TYPE for r in requests],
                mode=self.config.mode,
            )
        except Exception as exc:
            self.metrics.errors.labels("decision_failed").inc()
            logger.exception("the policy failed for %d requests", len(requests))
            raise DecisionFailed(f"{type(exc).__name__}: {exc}") from exc
        if store_error is not None:
            marker = f'"{RULE_FALLBACK}"'
            no_features = np.array([marker in r for r in rows["rules_applied"]], dtype=bool)
            rows["fallback_reason"][no_features] = store_error
        return rows

    def _count(self, responses: Sequence[Mapping[str, Any]]) -> None:
        """Count decisions new to this process by action and mode, and fallbacks by reason."""
        by_action = Tally((r["action"], r["mode"]) for r in responses)
        for (action, mode), count in by_action.items():
            self.metrics.decisions.labels(action, mode).inc(count)
        reasons = Tally(
            str(r["fallback_reason"]).split(":")[0]
            for r in responses
            if r["fallback_reason"] is not None
        )
        for reason, count in reasons.items():
            self.metrics.fallbacks.labels(reason).inc(count)

    # --------------------------------------------------------- buffer and flush
    def _buffer_decisions(self, rows: dict[str, np.ndarray]) -> None:
        n = len(rows["decision_id"])
        if n == 0:
            return
        with self._buffer_lock:
            self._buffer.append(rows)
            self._buffer_rows += n
            size = self._buffer_rows
        self.metrics.buffered.set(size)
        if size >= self.config.flush_max_rows:
            self._wake_flush.set()

    @property
    def buffered(self) -> int:
        """Decisions not yet written to the decision log."""
        with self._buffer_lock:
            return self._buffer_rows

    def flush(self, *, after_outbox: Callable[[], Any] | None = None) -> int:
        """Write every decision buffered so far: live offers into the outbox, then all into
        the decision log (both idempotent). Returns rows taken from the buffer. On failure
        the rows go back to the front of the buffer and the error is raised.

        ``after_outbox`` runs once the offers are in the outbox and before the log append
        (the stream dispatches there, so the CRM write does not wait for the warehouse); an
        error it raises is re-raised after the log append."""
        with self._flush_lock:
            with self._buffer_lock:
                frames, self._buffer, self._buffer_rows = self._buffer, [], 0
            if not frames:
                return 0
            # One frame for the whole batch, built here (off the request path).
            batch = decisions_frame(
                {name: np.concatenate([f[name] for f in frames]) for name in frames[0]}
            )
            callback_error: Exception | None = None
            try:
                if self.config.mode == "live":
                    self.outbox.enqueue(batch)
                if after_outbox is not None:
                    try:
                        after_outbox()
                    except Exception as exc:
                        callback_error = exc
                con = connect(
                    self.settings.warehouse_path, timeout_s=self.config.warehouse_timeout_s
                )
                try:
                    append_decisions(con, batch)
                finally:
                    con.close()
            except Exception:
                with self._buffer_lock:
                    self._buffer[:0] = frames
                    self._buffer_rows += len(batch)
                self.metrics.errors.labels("flush_failed").inc()
                raise
            finally:
                self.metrics.buffered.set(self.buffered)
            if callback_error is not None:
                raise callback_error
            return len(batch)

    def dispatch(self) -> DispatchSummary:
        """Send due outbox rows to the CRM (exactly-once by decision_id)."""
        with self._dispatch_lock:
            return self.outbox.dispatch(self.crm, max_wait_s=0.0)

    # ----------------------------------------------------------- background loops
    def _poll_loop(self) -> None:
        while not self._stop.wait(self.config.model_poll_s):
            if not self.state.feature_store:
                self._load_feature_store()
            self.refresh_policy()

    def _flush_loop(self) -> None:
        while not self._stop.is_set():
            self._wake_flush.wait(self.config.flush_interval_s)
            self._wake_flush.clear()
            if self._stop.is_set():
                break  # close() drains what is left
            try:
                self.flush()
            except Exception:
                logger.exception("decision flush failed; retrying at the next interval")

    def _dispatch_loop(self) -> None:
        if self.config.mode != "live":
            return
        while not self._stop.wait(self.config.dispatch_interval_s):
            try:
                self.dispatch()
            except Exception:
                self.metrics.errors.labels("dispatch_failed").inc()
                logger.exception("outbox dispatch failed; retrying at the next interval")


def _context_groups(requests: Sequence[DecisionRequest]) -> list[list[int]]:
    """Positions split so that no group holds one contact twice with different contexts."""
    groups: list[list[int]] = []
    seen: list[dict[str, str]] = []
    for i, request in enumerate(requests):
        key = orjson.dumps(dict(request.context or {}), option=orjson.OPT_SORT_KEYS).decode()
        for group, contexts in zip(groups, seen, strict=True):
            if contexts.get(request.contact_id, key) == key:
                group.append(i)
                contexts[request.contact_id] = key
                break
        else:
            groups.append([i])
            seen.append({request.contact_id: key})
    return groups


def _feature_columns(values: Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
    """Contract-typed columns of the plain values an online read returns (None where a
    value is absent): the values :func:`online_features` puts in its frame, INTEGER and
    DOUBLE features as float64 with NaN, VARCHAR as objects."""
    columns: dict[str, np.ndarray] = {}
    for name, typ in FEATURES.items():
        column = values[name]
        n = len(column)
        if typ == "INTEGER":
            # Through int32 like the frame's Int32 column (same range and the same errors).
            mask = np.fromiter((v is None for v in column), dtype=bool, count=n)
            data = np.fromiter((0 if v is None else v for v in column), dtype=np.int32, count=n)
            numbers = data.astype(np.float64)
            numbers[mask] = np.nan
            columns[name] = numbers
        elif typ == "DOUBLE":
            columns[name] = np.fromiter(
                (math.nan if v is None else v for v in column), dtype=np.float64, count=n
            )
        else:
            array = np.empty(n, dtype=object)
            array[:] = column
            columns[name] = array
    return columns


def _apply_request_context(
    features: dict[str, np.ndarray],
    contact_ids: Sequence[str],
    requests: Sequence[DecisionRequest],
) -> None:
    """Write the requests' context values over the stored ones (in place), for every row of
    the contact: request-time context wins, an INTEGER feature is truncated to an integer."""
    for request in requests:
        if not request.context:
            continue
        contact = str(request.contact_id)
        rows = [i for i, contact_id in enumerate(contact_ids) if contact_id == contact]
        for name, value in request.context.items():
            number = math.nan if value is None else float(value)
            if FEATURES[name] == "INTEGER" and math.isfinite(number):
                number = float(int(number))
            features[name][rows] = number
