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
        self.feature_names = list(feature_names)
        self.explain_top_k = explain_top_k

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

    def _churned(self, contexts: pd.DataFrame) -> np.ndarray:
        if "lifecycle_stage" in contexts.columns:
            return contexts["lifecycle_stage"].isin(self.rules.ineligible_stages).to_numpy()
        if "lifecycle_stage_rank" in contexts.columns:
            ranks = [LIFECYCLE_STAGES.index(s) for s in self.rules.ineligible_stages]
            return contexts["lifecycle_stage_rank"].isin(ranks).to_numpy()
        return np.zeros(len(contexts), dtype=bool)

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
        unique_contexts = contexts[~contexts.index.duplicated(keep="last")]
        unique_contexts.index = unique_contexts.index.astype(str)
        rows = unique_contexts.reindex(pd.Index(contact, name="contact_id"))
        features = rows.reindex(columns=self.feature_names)
        values = features.to_numpy(dtype=np.float64, na_value=np.nan)
        has_features = np.isfinite(values).any(axis=1) if values.shape[1] else np.zeros(n, bool)

        ids = np.asarray(decision_ids(contact, trigger_id, self.policy_version), dtype=object)
        holdout = holdout_mask(contact, self.rules.holdout_share, self.rules.holdout_salt)
        erased = np.isin(contact, list(self.erased_contacts))
        override = pd.Series(contact).map(self.overrides).to_numpy(dtype=object)
        has_override = pd.notna(override)
        churned = self._churned(rows)
        capped = self._capped_by_history(contact, decided_at, features)

        default = self.rules.default_action
        action = np.full(n, default, dtype=object)
        propensity = np.ones(n)
        rule = np.full(n, None, dtype=object)
        fallback = np.full(n, None, dtype=object)

        # Precedence: each mask only claims rows no earlier rule claimed.
        for mask, name in (
            (holdout, RULE_HOLDOUT),
            (np.full(n, not self.autonomy), RULE_KILL_SWITCH),
            (erased, RULE_ERASED),
            (has_override, RULE_OVERRIDE),
            (churned, RULE_CHURNED),
            (~has_features, RULE_FALLBACK),
            (capped, RULE_FREQUENCY_CAP),
        ):
            claim = mask & pd.isna(rule)
            rule[claim] = name
        action[rule == RULE_HOLDOUT] = DEFAULT_ACTION
        action[rule == RULE_OVERRIDE] = override[rule == RULE_OVERRIDE]
        fallback[rule == RULE_FALLBACK] = FALLBACK_NO_FEATURES

        expected = np.full((n, len(self.actions)), np.nan)
        free = pd.isna(rule)  # rows the bandit decides; all of them have features
        try:
            # Expected margins are informative wherever features exist, rule outcomes included.
            to_score = has_features
            scored_rows = features[to_score]
            draws = self.bandit.decide_and_score(scored_rows, draw_keys=ids[to_score])
            positions = np.flatnonzero(to_score)
            free_in_scored = free[to_score]
            action[positions[free_in_scored]] = draws["action"].to_numpy()[free_in_scored]
            propensity[positions[free_in_scored]] = draws["propensity"].to_numpy()[free_in_scored]
            expected[to_score] = draws[[f"expected_{a}" for a in self.actions]].to_numpy()
        except Exception as exc:  # a broken model must not stop the batch
            logger.exception("model failed to score %d contacts; falling back", int(free.sum()))
            rule[free] = RULE_FALLBACK
            action[free] = default
            fallback[free] = f"model_error: {type(exc).__name__}: {exc}"[:500]
            expected[:] = np.nan

        self._cap_within_batch(contact, decided_at, trigger_id, action, propensity, rule)

        explanation: list[list[dict[str, object]]] = [[] for _ in range(n)]
        explain_rows = has_features
        if not self.bandit.is_cold and explain_rows.any():
            try:
                explained = self.bandit.explain(
                    features[explain_rows], action[explain_rows], top_k=self.explain_top_k
                )
                for pos, value in zip(np.flatnonzero(explain_rows), explained, strict=True):
                    explanation[pos] = value
            except Exception:  # an explanation is informative, not worth losing a decision
                logger.exception("explanations failed for %d rows", int(explain_rows.sum()))

        expected_json = _json_dumps(
            {a: (None if np.isnan(v) else float(v)) for a, v in zip(self.actions, row, strict=True)}
            for row in expected
        )
        rules_json = _json_dumps([] if r is None else [r] for r in rule)
        decided_at_index = pd.DatetimeIndex(decided_at)
        return pd.DataFrame(
            {
                "decision_id": ids,
                "contact_id": contact,
                "decided_at": decided_at_index,
                "decision_date": decided_at_index.normalize().date,
                "trigger_event_id": trigger_id,
                "trigger_type": trigger_type,
                "policy_version": self.policy_version,
                "model_version": self.model_version,
                "mode": mode,
                "action": action,
                "propensity": propensity,
                "holdout": holdout,
                "expected_rewards": expected_json,
                "explanation": _json_dumps(explanation),
                "rules_applied": rules_json,
                "fallback_reason": fallback,
            },
            columns=DECISION_LOG_COLUMNS,
        )

    def _capped_by_history(
        self, contact: np.ndarray, decided_at: np.ndarray, features: pd.DataFrame
    ) -> np.ndarray:
        """True where an offer falls inside the cap window, from the feature row (as of its
        cutoff) or from the last live offer logged since."""
        cap_days = self.rules.frequency_cap_days
        capped = np.zeros(len(contact), dtype=bool)
        if "days_since_last_action" in features.columns:
            days = features["days_since_last_action"].to_numpy(dtype=np.float64, na_value=np.nan)
            capped |= days < cap_days
        if len(self.last_offer_at):
            last = pd.Series(contact).map(self.last_offer_at).to_numpy(dtype="datetime64[ns]")
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
