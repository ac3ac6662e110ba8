"""The decision policy: business rules around the bandit, producing decision-log rows.

Rules, in order of precedence (the first that applies decides; it is recorded in
``rules_applied``, its outcome is deterministic and logged with propensity 1.0):

1. ``holdout``: a persistent share of contacts (hash of contact_id with a fixed salt, default
   10%) always gets ``no_offer``; they measure incremental revenue against the policy.
2. ``kill_switch``: autonomy off -> the default action for everyone, overrides included (an
   incident stop must stop everything).
3. ``erased``: contacts who asked for erasure are never contacted.
4. ``override``: a human forced an action for the contact.
5. ``ineligible_churned``: churned contacts get no offer.
6. ``fallback``: no features for the contact (new or erased): default action,
   ``fallback_reason='no_features'``; an error in the model gives ``model_error: ...``.
7. ``frequency_cap``: an offer within the cap window (default 7 days), from the
   ``days_since_last_action`` feature, the last live offer in the decision log, or an earlier
   offer for the same contact in the same batch -> default action.
8. Otherwise the bandit decides (uniform at random under cold start) with its exact propensity.

Overrides and the kill switch live in DuckDB (``decide.overrides``, ``decide.autonomy``) with
who set them, why and when.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

import duckdb
import numpy as np
import orjson
import pandas as pd

from journey_pipeline.actions import ACTION_NAMES, DEFAULT_ACTION, validate_action
from journey_pipeline.decide.bandit import ContextualBandit
from journey_pipeline.decide.log import (
    DECISION_LOG_COLUMNS,
    decision_ids,
    ensure_decision_log,
    last_offer_times,
    utc_naive,
)
from journey_pipeline.features.contract import LIFECYCLE_STAGES, MODEL_FEATURES

logger = logging.getLogger(__name__)

# Fixed so that holdout membership never moves: changing it reshuffles the control group.
HOLDOUT_SALT = "journey-pipeline/holdout/v1"

RULE_HOLDOUT = "holdout"
RULE_KILL_SWITCH = "kill_switch"
RULE_ERASED = "erased"
RULE_OVERRIDE = "override"
RULE_CHURNED = "ineligible_churned"
RULE_FALLBACK = "fallback"
RULE_FREQUENCY_CAP = "frequency_cap"

FALLBACK_NO_FEATURES = "no_features"

CONTROL_DDL = """
CREATE SCHEMA IF NOT EXISTS decide;
CREATE TABLE IF NOT EXISTS decide.overrides (
    contact_id  VARCHAR PRIMARY KEY,
    action      VARCHAR NOT NULL,
    who         VARCHAR NOT NULL,
    why         VARCHAR NOT NULL,
    set_at      TIMESTAMP NOT NULL     -- UTC
);
CREATE TABLE IF NOT EXISTS decide.override_history (
    contact_id  VARCHAR NOT NULL,
    action      VARCHAR,               -- NULL: the override was cleared
    who         VARCHAR NOT NULL,
    why         VARCHAR NOT NULL,
    set_at      TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS decide.autonomy (
    enabled     BOOLEAN NOT NULL,      -- latest row wins; no row means enabled
    who         VARCHAR NOT NULL,
    why         VARCHAR NOT NULL,
    set_at      TIMESTAMP NOT NULL
);
"""


@dataclass(frozen=True)
class PolicyRules:
    """Tunable rules of the policy; part of the default policy version's fingerprint."""

    holdout_share: float = 0.10
    holdout_salt: str = HOLDOUT_SALT
    frequency_cap_days: float = 7.0
    default_action: str = DEFAULT_ACTION
    ineligible_stages: tuple[str, ...] = ("churned",)

    def fingerprint(self) -> str:
        """Short stable hash of the rule settings."""
        payload = json.dumps(asdict(self), sort_keys=True, default=list).encode()
        return hashlib.sha256(payload).hexdigest()[:8]


def holdout_mask(
    contact_ids: Iterable[str], share: float = 0.10, salt: str = HOLDOUT_SALT
) -> np.ndarray:
    """Persistent holdout membership: True where sha256(salt:contact_id) falls in the first
    ``share`` of the hash space. The same contact is always in or always out."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"holdout share must be in [0, 1], got {share}")
    prefix = f"{salt}:".encode()
    buckets = np.fromiter(
        (
            int.from_bytes(hashlib.sha256(prefix + str(c).encode()).digest()[:8], "big")
            for c in contact_ids
        ),
        dtype=np.uint64,
    )
    return (buckets.astype(np.float64) / 2.0**64) < share


def _now() -> datetime:
    return utc_naive(pd.Timestamp.now(tz="UTC"))


# ------------------------------------------------------------- control tables
def ensure_control_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create ``decide.overrides``, ``decide.override_history`` and ``decide.autonomy``."""
    con.execute(CONTROL_DDL)


def set_override(
    con: duckdb.DuckDBPyConnection,
    contact_id: str,
    action: str,
    who: str,
    why: str,
    *,
    actions: Sequence[str] = ACTION_NAMES,
    at: datetime | None = None,
) -> None:
    """Force ``action`` for ``contact_id`` from now on; ValueError for an unknown action."""
    if action not in actions:
        raise ValueError(f"unknown action {action!r} in override; known actions: {list(actions)}")
    if not who or not why:
        raise ValueError("an override needs who set it and why")
    ensure_control_tables(con)
    when = utc_naive(at) if at is not None else _now()
    con.execute("DELETE FROM decide.overrides WHERE contact_id = ?", [contact_id])
    con.execute(
        "INSERT INTO decide.overrides VALUES (?, ?, ?, ?, ?)", [contact_id, action, who, why, when]
    )
    con.execute(
        "INSERT INTO decide.override_history VALUES (?, ?, ?, ?, ?)",
        [contact_id, action, who, why, when],
    )


def clear_override(
    con: duckdb.DuckDBPyConnection,
    contact_id: str,
    who: str,
    why: str,
    *,
    at: datetime | None = None,
) -> None:
    """Remove the override of ``contact_id`` (recorded in the history)."""
    ensure_control_tables(con)
    when = utc_naive(at) if at is not None else _now()
    con.execute("DELETE FROM decide.overrides WHERE contact_id = ?", [contact_id])
    con.execute(
        "INSERT INTO decide.override_history VALUES (?, NULL, ?, ?, ?)",
        [contact_id, who, why, when],
    )


def load_overrides(
    con: duckdb.DuckDBPyConnection, *, actions: Sequence[str] = ACTION_NAMES
) -> dict[str, str]:
    """Current overrides, contact_id -> action. ValueError if any names an unknown action
    (e.g. an action removed from the catalogue since it was set)."""
    ensure_control_tables(con)
    rows = con.execute("SELECT contact_id, action FROM decide.overrides").fetchall()
    overrides = dict(rows)
    validate_overrides(overrides, actions)
    return overrides


def validate_overrides(overrides: Mapping[str, str], actions: Sequence[str]) -> None:
    """ValueError naming every override whose action is not one of ``actions``."""
    bad = {c: a for c, a in overrides.items() if a not in actions}
    if bad:
        raise ValueError(
            f"overrides name unknown actions {bad}; known actions: {', '.join(actions)}"
        )


def set_autonomy(
    con: duckdb.DuckDBPyConnection,
    enabled: bool,
    who: str,
    why: str,
    *,
    at: datetime | None = None,
) -> None:
    """Switch autonomy on or off (off = the kill switch: everyone gets the default action)."""
    if not who or not why:
        raise ValueError("switching autonomy needs who did it and why")
    ensure_control_tables(con)
    when = utc_naive(at) if at is not None else _now()
    con.execute("INSERT INTO decide.autonomy VALUES (?, ?, ?, ?)", [bool(enabled), who, why, when])


def autonomy_enabled(con: duckdb.DuckDBPyConnection) -> bool:
    """Latest autonomy setting; True when it was never set."""
    ensure_control_tables(con)
    row = con.execute(
        "SELECT enabled FROM decide.autonomy ORDER BY set_at DESC, rowid DESC LIMIT 1"
    ).fetchone()
    return True if row is None else bool(row[0])


def load_erased_contacts(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Contacts in ``ops.erasures`` (empty when the observe stage has not created it)."""
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_schema = 'ops' AND table_name = 'erasures'"
    ).fetchone()[0]
    if not exists:
        return set()
    return {r[0] for r in con.execute("SELECT contact_id FROM ops.erasures").fetchall()}


# --------------------------------------------------------------------- policy
def _json_dumps(values: Iterable[object]) -> list[str]:
    # orjson writes NaN as null, which is what a missing expected reward is.
    return [orjson.dumps(v).decode() for v in values]


_JSON_COLUMNS = ("expected_rewards", "explanation", "rules_applied")


def _object_array(values: Sequence[object]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _aligned_columns(
    contexts: pd.DataFrame, contact: np.ndarray, feature_names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Columns of ``contexts`` aligned with ``contact`` (the last row of a duplicated contact
    wins; a contact without a row gets NaN): ``feature_names`` as float64 (all NaN when
    ``contexts`` lacks the column), plus ``lifecycle_stage`` and ``lifecycle_stage_rank``
    when ``contexts`` has them."""
    index = contexts.index
    if not index.is_unique:
        contexts = contexts[~index.duplicated(keep="last")]
    positions = contexts.index.astype(str).get_indexer(pd.Index(contact, dtype=object))
    found = positions >= 0
    take = np.where(found, positions, 0)
    empty = len(contexts) == 0

    def aligned(name: str, dtype: type, missing: object) -> np.ndarray:
        if name not in contexts.columns or empty:
            return np.full(len(contact), missing, dtype=dtype)
        if dtype is object:
            column = contexts[name].to_numpy(dtype=object)
        else:
            column = contexts[name].to_numpy(dtype=np.float64, na_value=np.nan)
        out = column[take]
        out[~found] = missing
        return out

    columns = {name: aligned(name, np.float64, np.nan) for name in feature_names}
    if "lifecycle_stage" in contexts.columns:
        columns["lifecycle_stage"] = aligned("lifecycle_stage", object, None)
    if "lifecycle_stage_rank" in contexts.columns and "lifecycle_stage_rank" not in columns:
        columns["lifecycle_stage_rank"] = aligned("lifecycle_stage_rank", np.float64, np.nan)
    return columns


def decisions_frame(columns: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """The decision-log frame of :meth:`DecisionPolicy.decide_columns` output (adds
    ``decision_date``, the UTC date of ``decided_at``)."""
    decided_at = pd.DatetimeIndex(columns["decided_at"])
    return pd.DataFrame(
        {
            **{name: columns[name] for name in DECISION_LOG_COLUMNS if name in columns},
            # As lists: an empty batch gets the column dtypes it always had.
            **{name: list(columns[name]) for name in _JSON_COLUMNS},
            "decided_at": decided_at,
            "decision_date": decided_at.normalize().date,
        },
        columns=DECISION_LOG_COLUMNS,
    )


class DecisionPolicy:
    """Business rules around a :class:`ContextualBandit` (or ``None`` under cold start).

    In: the bandit and its registry ``model_version``; ``rules``; the current ``overrides``
    (contact_id -> action, validated here), ``autonomy``, ``erased_contacts`` and
    ``last_offer_at`` (contact_id -> time of the last live offer). ``policy_version`` defaults
    to the model version plus a fingerprint of the rules, so changing either changes the
    decision ids.
    """

    def __init__(
        self,
        bandit: ContextualBandit | None,
        *,
        model_version: str | None = None,
        policy_version: str | None = None,
        rules: PolicyRules | None = None,
        overrides: Mapping[str, str] | None = None,
        autonomy: bool = True,
        erased_contacts: Iterable[str] = (),
        last_offer_at: pd.Series | Mapping[str, datetime] | None = None,
        feature_names: Sequence[str] = MODEL_FEATURES,
        actions: Sequence[str] | None = None,
        seed: int = 0,
        explain_top_k: int = 3,
    ) -> None:
        self.rules = rules or PolicyRules()
        self.actions = list(actions or (bandit.actions if bandit is not None else ACTION_NAMES))
        for action in self.actions:
            validate_action(action)
        if self.rules.default_action not in self.actions:
            raise ValueError(
                f"default action {self.rules.default_action!r} is not among {self.actions}"
            )
        if bandit is not None and list(bandit.actions) != self.actions:
            raise ValueError(f"bandit actions {bandit.actions} differ from {self.actions}")
        self.overrides = dict(overrides or {})
        validate_overrides(self.overrides, self.actions)
        # Under cold start an untrained bandit draws uniformly with exact propensities.
        self.bandit = bandit if bandit is not None else ContextualBandit(self.actions, seed=seed)
        self.model_version = None if bandit is None or bandit.is_cold else model_version
        base = f"model-v{self.model_version}" if self.model_version else "cold-start"
        self.policy_version = policy_version or f"{base}+rules-{self.rules.fingerprint()}"
        self.autonomy = bool(autonomy)
        self.erased_contacts = set(erased_contacts)
        self.last_offer_at = pd.Series(last_offer_at, dtype="datetime64[ns]")
        self._last_offer_lookup: tuple[pd.Series, dict[object, np.datetime64] | None] | None = None
        self.feature_names = list(feature_names)
        self.explain_top_k = explain_top_k
        if not self.bandit.is_cold:
            self.bandit._stacked_models()  # built with the policy, not by its first decision

    @classmethod
    def from_warehouse(
        cls,
        con: duckdb.DuckDBPyConnection,
        bandit: ContextualBandit | None,
        *,
        model_version: str | None = None,
        **options: object,
    ) -> DecisionPolicy:
        """A policy with overrides, autonomy, erasures and last live offers read from the
        warehouse behind ``con``; other options as for the constructor."""
        ensure_decision_log(con)
        actions = list(bandit.actions) if bandit is not None else ACTION_NAMES
        return cls(
            bandit,
            model_version=model_version,
            overrides=load_overrides(con, actions=actions),
            autonomy=autonomy_enabled(con),
            erased_contacts=load_erased_contacts(con),
            last_offer_at=last_offer_times(con),
            **options,  # type: ignore[arg-type]
        )

    def decide(
        self, contexts: pd.DataFrame, triggers: pd.DataFrame, mode: str = "live"
    ) -> pd.DataFrame:
        """Decide once per trigger.

        In: ``contexts`` indexed by contact_id (feature columns; contacts may be missing),
        ``triggers`` with ``trigger_event_id``, ``decided_at`` and optionally
        ``trigger_type`` plus the contact id as a ``contact_id`` column or as the index;
        ``mode`` 'live' or 'shadow'.
        Out: one row per trigger, in trigger order, with the decision-log columns.
        """
        if mode not in ("live", "shadow"):
            raise ValueError(f"mode must be 'live' or 'shadow', got {mode!r}")
        for column in ("trigger_event_id", "decided_at"):
            if column not in triggers.columns:
                raise ValueError(f"triggers lack the column {column!r}")
        n = len(triggers)
        if "contact_id" in triggers.columns:
            contact = triggers["contact_id"].astype(str).to_numpy(dtype=object)
        else:
            contact = triggers.index.astype(str).to_numpy(dtype=object)
        trigger_id = triggers["trigger_event_id"].astype(str).to_numpy(dtype=object)
        trigger_type = (
            triggers["trigger_type"].to_numpy(dtype=object)
            if "trigger_type" in triggers.columns
            else np.full(n, None, dtype=object)
        )
        decided_at = pd.to_datetime(triggers["decided_at"], utc=True).dt.tz_localize(None)
        decided_at = decided_at.to_numpy(dtype="datetime64[ns]")

        if len(contexts.columns) and len(contexts):
            missing = [f for f in self.feature_names if f not in contexts.columns]
            if missing:
                raise ValueError(f"contexts lack the feature columns {missing}")
        columns = self.decide_columns(
            contact,
            trigger_id,
            decided_at,
            _aligned_columns(contexts, contact, self.feature_names),
            trigger_types=trigger_type,
            mode=mode,
        )
        return decisions_frame(columns)

    def decide_columns(
        self,
        contact_ids: Sequence[str] | np.ndarray,
        trigger_event_ids: Sequence[str] | np.ndarray,
        decided_at: Sequence[object] | np.ndarray,
        features: Mapping[str, Sequence[object] | np.ndarray],
        *,
        trigger_types: Sequence[str | None] | np.ndarray | None = None,
        mode: str = "live",
    ) -> dict[str, np.ndarray]:
        """:meth:`decide` on columns already aligned with the triggers, without DataFrames
        (what :meth:`decide` runs after aligning its inputs; the real-time service calls it
        directly).

        In: per trigger, the contact id (str), trigger event id (str), ``decided_at``
        (naive UTC, anything ``numpy.datetime64[ns]`` accepts) and optionally trigger type;
        ``features``: one value per trigger for every name in ``feature_names`` (numbers,
        NaN or None where the contact has no value), plus optionally ``lifecycle_stage``
        (names) or ``lifecycle_stage_rank`` for the eligibility rule.
        Out: the decision-log columns except ``decision_date``, as numpy arrays of equal
        length (:func:`decisions_frame` makes the decision-log frame of them).
        """
        if mode not in ("live", "shadow"):
            raise ValueError(f"mode must be 'live' or 'shadow', got {mode!r}")
        contact = np.asarray(contact_ids, dtype=object)
        n = len(contact)
        trigger_id = np.asarray(trigger_event_ids, dtype=object)
        trigger_type = (
            np.full(n, None, dtype=object)
            if trigger_types is None
            else np.asarray(trigger_types, dtype=object)
        )
        decided_at = np.asarray(decided_at, dtype="datetime64[ns]")
        if not len(trigger_id) == len(trigger_type) == len(decided_at) == n:
            raise ValueError("contact ids, trigger ids, types and times differ in length")
        missing = [f for f in self.feature_names if f not in features]
        if missing:
            raise ValueError(f"features lack the feature columns {missing}")
        values = np.empty((n, len(self.feature_names)), dtype=np.float64)
        for j, name in enumerate(self.feature_names):
            values[:, j] = features[name]
        has_features = np.isfinite(values).any(axis=1) if values.shape[1] else np.zeros(n, bool)

        ids = np.asarray(decision_ids(contact, trigger_id, self.policy_version), dtype=object)
        holdout = holdout_mask(contact, self.rules.holdout_share, self.rules.holdout_salt)
        erased_contacts = self.erased_contacts
        erased = np.fromiter((c in erased_contacts for c in contact), dtype=bool, count=n)
        overrides = self.overrides
        override = np.fromiter((overrides.get(c) for c in contact), dtype=object, count=n)
        has_override = np.fromiter((c in overrides for c in contact), dtype=bool, count=n)
        churned = self._churned(features, n)
        capped = self._capped_by_history(contact, decided_at, values)

        default = self.rules.default_action
        action = np.full(n, default, dtype=object)
        propensity = np.ones(n)
        rule = np.full(n, None, dtype=object)
        fallback = np.full(n, None, dtype=object)

        # Precedence: each mask only claims rows no earlier rule claimed.
        free = np.ones(n, dtype=bool)  # rows no rule claimed (yet)
        for mask, name in (
            (holdout, RULE_HOLDOUT),
            (np.full(n, not self.autonomy), RULE_KILL_SWITCH),
            (erased, RULE_ERASED),
            (has_override, RULE_OVERRIDE),
            (churned, RULE_CHURNED),
            (~has_features, RULE_FALLBACK),
            (capped, RULE_FREQUENCY_CAP),
        ):
            claim = mask & free
            rule[claim] = name
            free &= ~claim
        action[rule == RULE_HOLDOUT] = DEFAULT_ACTION
        action[rule == RULE_OVERRIDE] = override[rule == RULE_OVERRIDE]
        fallback[rule == RULE_FALLBACK] = FALLBACK_NO_FEATURES

        expected = np.full((n, len(self.actions)), np.nan)
        # Expected margins are informative wherever features exist, rule outcomes included;
        # the bandit's choice only counts for the free rows (all of which have features).
        scored = np.flatnonzero(has_features)
        matrix: np.ndarray | None = None
        try:
            uniforms = self.bandit._uniforms(len(scored), ids[scored])
            if not self.bandit.is_cold:
                matrix = self.bandit._matrix_from(values[scored], self.feature_names)
            chosen, chosen_propensity, scored_expected = self.bandit._choose_from(matrix, uniforms)
            free_in_scored = free[scored]
            bandit_actions = np.asarray(self.bandit.actions, dtype=object)
            action[scored[free_in_scored]] = bandit_actions[chosen][free_in_scored]
            propensity[scored[free_in_scored]] = chosen_propensity[free_in_scored]
            if scored_expected is not None:
                expected[scored] = scored_expected
        except Exception as exc:  # a broken model must not stop the batch
            logger.exception("model failed to score %d contacts; falling back", int(free.sum()))
            rule[free] = RULE_FALLBACK
            action[free] = default
            fallback[free] = f"model_error: {type(exc).__name__}: {exc}"[:500]
            expected[:] = np.nan

        if n > 1:
            self._cap_within_batch(contact, decided_at, trigger_id, action, propensity, rule)

        explanation: list[list[dict[str, object]]] = [[] for _ in range(n)]
        if not self.bandit.is_cold and len(scored):
            try:
                if matrix is None:  # scoring failed before building it: this raises again
                    matrix = self.bandit._matrix_from(values[scored], self.feature_names)
                explained = self.bandit._explain_from(
                    matrix, self.bandit._action_indices(action[scored]), top_k=self.explain_top_k
                )
                for pos, value in zip(scored, explained, strict=True):
                    explanation[pos] = value
            except Exception:  # an explanation is informative, not worth losing a decision
                logger.exception("explanations failed for %d rows", len(scored))

        expected_json = _json_dumps(
            {a: (None if np.isnan(v) else float(v)) for a, v in zip(self.actions, row, strict=True)}
            for row in expected.tolist()
        )
        rules_json = _json_dumps([] if r is None else [r] for r in rule)
        return {
            "decision_id": ids,
            "contact_id": contact,
            "decided_at": decided_at,
            "trigger_event_id": trigger_id,
            "trigger_type": trigger_type,
            "policy_version": np.full(n, self.policy_version, dtype=object),
            "model_version": np.full(n, self.model_version, dtype=object),
            "mode": np.full(n, mode, dtype=object),
            "action": action,
            "propensity": propensity,
            "holdout": holdout,
            "expected_rewards": _object_array(expected_json),
            "explanation": _object_array(_json_dumps(explanation)),
            "rules_applied": _object_array(rules_json),
            "fallback_reason": fallback,
        }

    def _churned(self, features: Mapping[str, Sequence[object] | np.ndarray], n: int) -> np.ndarray:
        """Rows in an ineligible lifecycle stage, by ``lifecycle_stage`` name or else by
        ``lifecycle_stage_rank``."""
        if "lifecycle_stage" in features:
            stages = set(self.rules.ineligible_stages)
            return np.fromiter(
                (s in stages for s in features["lifecycle_stage"]), dtype=bool, count=n
            )
        if "lifecycle_stage_rank" in features:
            ranks = [LIFECYCLE_STAGES.index(s) for s in self.rules.ineligible_stages]
            rank = np.asarray(features["lifecycle_stage_rank"], dtype=np.float64)
            return np.isin(rank, ranks)
        return np.zeros(n, dtype=bool)

    def _last_offers(self, contact: np.ndarray) -> np.ndarray:
        """Time of the last live offer of each contact (NaT when none): ``last_offer_at``
        looked up through a dict built once per Series."""
        series = self.last_offer_at
        cached = self._last_offer_lookup
        if cached is None or cached[0] is not series:
            lookup = None
            if series.index.is_unique:
                lookup = dict(
                    zip(series.index, series.to_numpy(dtype="datetime64[ns]"), strict=True)
                )
            cached = self._last_offer_lookup = (series, lookup)
        lookup = cached[1]
        if lookup is None:  # a duplicated contact is an error, as pandas' map reports it
            return pd.Series(contact).map(series).to_numpy(dtype="datetime64[ns]")
        missing = np.datetime64("NaT", "ns")
        return np.array([lookup.get(c, missing) for c in contact], dtype="datetime64[ns]")

    def _capped_by_history(
        self, contact: np.ndarray, decided_at: np.ndarray, values: np.ndarray
    ) -> np.ndarray:
        """True where an offer falls inside the cap window, from the feature row (as of its
        cutoff) or from the last live offer logged since."""
        cap_days = self.rules.frequency_cap_days
        capped = np.zeros(len(contact), dtype=bool)
        if "days_since_last_action" in self.feature_names:
            days = values[:, self.feature_names.index("days_since_last_action")]
            capped |= days < cap_days
        if len(self.last_offer_at):
            last = self._last_offers(contact)
            age_days = (decided_at - last) / np.timedelta64(1, "D")
            capped |= (age_days >= 0) & (age_days < cap_days)  # NaT compares False
        return capped

    def _cap_within_batch(
        self,
        contact: np.ndarray,
        decided_at: np.ndarray,
        trigger_id: np.ndarray,
        action: np.ndarray,
        propensity: np.ndarray,
        rule: np.ndarray,
    ) -> None:
        """A contact with several triggers in one batch gets at most one offer per cap window:
        later bandit offers after a kept offer become the default action (in place)."""
        default = self.rules.default_action
        offer = action != default
        duplicated = pd.Series(contact).duplicated(keep=False).to_numpy()
        candidates = np.flatnonzero(offer & duplicated)
        if len(candidates) == 0:
            return
        order = pd.DataFrame(
            {
                "contact": contact[candidates],
                "at": decided_at[candidates],
                "trigger": trigger_id[candidates],
                "pos": candidates,
            }
        ).sort_values(["contact", "at", "trigger"])
        window = np.timedelta64(int(self.rules.frequency_cap_days * 86_400), "s")
        # Only contacts with several offers in the batch reach this loop: few rows.
        for _, group in order.groupby("contact", sort=False):
            kept_at = None
            for pos, at in zip(group["pos"], group["at"], strict=True):
                if kept_at is not None and at - kept_at < window and rule[pos] is None:
                    action[pos] = default
                    propensity[pos] = 1.0
                    rule[pos] = RULE_FREQUENCY_CAP
                else:
                    kept_at = at
