"""Batch scoring: which contacts to decide for, with what features, and the training frame.

Plain functions shared by the Dagster assets, the CLI and tests. A partition's decisions are
taken at the close of its day (``decided_at`` = next day 00:00 UTC): exactly when the feature
row with that cutoff becomes current, so training (point-in-time) and serving see the same
values.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path

import duckdb
import pandas as pd

from journey_pipeline.decide.bandit import ContextualBandit
from journey_pipeline.decide.log import append_decisions, ensure_decision_log
from journey_pipeline.decide.policy import DecisionPolicy
from journey_pipeline.decide.registry import CHALLENGER, CHAMPION, load_policy_model
from journey_pipeline.decide.reward_model import TRAINING_COLUMNS
from journey_pipeline.learn.analysis import drift_episode_age
from journey_pipeline.settings import Settings

TRIGGER_TYPES = ("cart.abandoned", "lifecycle.opportunity")

# One decision per contact and day: the day's first trigger. Lifecycle triggers need the stage
# to *become* opportunity, so the previous contact.* event of the contact is looked up.
_TRIGGERS_SQL = """
WITH stage_changes AS (
    SELECT event_id, contact_id, occurred_at, lifecycle_stage,
           lag(lifecycle_stage) OVER (PARTITION BY contact_id ORDER BY occurred_at, event_id)
               AS previous_stage,
           event_date
    FROM raw.events
    WHERE event_type IN ('contact.created', 'contact.updated')
      AND contact_id IN (
          SELECT contact_id FROM raw.events
          WHERE event_date = $day AND event_type IN ('contact.created', 'contact.updated')
            AND lifecycle_stage = 'opportunity')
),
candidates AS (
    SELECT event_id, contact_id, occurred_at, 'cart.abandoned' AS trigger_type
    FROM raw.events WHERE event_date = $day AND event_type = 'cart.abandoned'
    UNION ALL
    SELECT event_id, contact_id, occurred_at, 'lifecycle.opportunity'
    FROM stage_changes
    WHERE event_date = $day AND lifecycle_stage = 'opportunity'
      AND previous_stage IS DISTINCT FROM 'opportunity'
)
SELECT event_id AS trigger_event_id, contact_id, trigger_type, occurred_at AS triggered_at
FROM candidates
WHERE contact_id NOT IN (SELECT contact_id FROM ops.erasures)
QUALIFY row_number() OVER (PARTITION BY contact_id ORDER BY occurred_at, event_id) = 1
ORDER BY contact_id
"""


def decision_time(day: date) -> datetime:
    """When the decisions of ``day`` are taken: its close, 00:00 UTC of the next day."""
    return datetime.combine(day + timedelta(days=1), time())


def day_triggers(con: duckdb.DuckDBPyConnection, day: date) -> pd.DataFrame:
    """Triggers of ``day`` (at most one per contact): columns trigger_event_id, contact_id,
    trigger_type, triggered_at, decided_at."""
    frame = con.execute(_TRIGGERS_SQL, {"day": day}).df()
    frame["decided_at"] = decision_time(day)
    return frame


@dataclass
class ScoringReport:
    triggers: int
    live_inserted: int
    shadow_inserted: int
    champion_version: str | None
    challenger_version: str | None
    decisions: pd.DataFrame  # the live decisions of this run

    def as_metadata(self) -> dict:
        live = self.decisions
        by_action = live["action"].value_counts().to_dict() if len(live) else {}
        return {
            "triggers": self.triggers,
            "live_decisions_inserted": self.live_inserted,
            "shadow_decisions_inserted": self.shadow_inserted,
            "champion_version": self.champion_version or "none (cold start: uniform exploration)",
            "challenger_version": self.challenger_version or "none",
            "holdout": int(live["holdout"].sum()) if len(live) else 0,
            "fallbacks": int(live["fallback_reason"].notna().sum()) if len(live) else 0,
            "decisions_by_action": {str(k): int(v) for k, v in by_action.items()},
        }


# While the newest drift check is at or above the retrain threshold, the live policy explores
# this much (uniformly random actions, propensities stay exact): the new customers' responses
# to every action get logged, for the retrain and the gate's off-policy estimates. For at most
# DRIFT_EXPLORATION_DAYS feature days from the onset: two retrain cycles' worth of data; when
# no challenger beat the champion by then, more exploration only costs margin.
DRIFT_EPSILON = 0.3
DRIFT_EXPLORATION_DAYS = 14


def exploring_during_drift(bandit: ContextualBandit | None, reports_dir: Path):
    """The bandit to decide with: while a drift episode is open (the newest drift check at or
    above the threshold) and younger than ``DRIFT_EXPLORATION_DAYS``, a copy exploring at
    least ``DRIFT_EPSILON``; else the bandit itself. The copy shares the fitted models; the
    cached champion is left as it is."""
    if bandit is None:
        return bandit
    age = drift_episode_age(reports_dir)
    if age is None or age >= DRIFT_EXPLORATION_DAYS:
        return bandit
    explorer = copy.copy(bandit)
    explorer.epsilon = max(bandit.epsilon, DRIFT_EPSILON)
    return explorer


def score_day(
    settings: Settings,
    con: duckdb.DuckDBPyConnection,
    day: date,
    contexts: pd.DataFrame,
    triggers: pd.DataFrame,
) -> ScoringReport:
    """Decide for ``triggers`` with the champion (live) and the challenger (shadow, when it is
    a different version) and append both to the decision log (idempotent on decision_id).

    ``contexts`` are the contacts' online features indexed by contact_id; contacts missing
    there fall back to the default action with reason 'no_features'.
    """
    ensure_decision_log(con)
    champion, champion_version = load_policy_model(CHAMPION, settings)
    challenger, challenger_version = load_policy_model(CHALLENGER, settings)
    champion = exploring_during_drift(champion, settings.reports_dir)
    live = DecisionPolicy.from_warehouse(con, champion, model_version=champion_version).decide(
        contexts, triggers, mode="live"
    )
    live_inserted = append_decisions(con, live) if len(live) else 0
    shadow_inserted = 0
    if challenger is not None and challenger_version != champion_version and len(triggers):
        shadow = DecisionPolicy.from_warehouse(
            con, challenger, model_version=challenger_version
        ).decide(contexts, triggers, mode="shadow")
        shadow_inserted = append_decisions(con, shadow)
    return ScoringReport(
        triggers=len(triggers),
        live_inserted=live_inserted,
        shadow_inserted=shadow_inserted,
        champion_version=champion_version,
        challenger_version=challenger_version,
        decisions=live,
    )


_LABELLED_SQL = """
SELECT o.decision_id, o.contact_id, o.decided_at, o.action, o.propensity, o.reward,
       o.converted, o.revenue
FROM learn.outcomes o
JOIN decide.decision_log d USING (decision_id)
WHERE o.matured AND NOT o.holdout AND o.reward IS NOT NULL
  AND d.mode = 'live' AND d.fallback_reason IS NULL
ORDER BY o.decided_at, o.decision_id
"""


def labelled_decisions(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Matured live decisions chosen by the policy (not the holdout, not a fallback) with
    their observed reward: the rows a reward model may learn from and be evaluated on.

    Decisions a business rule forced (frequency cap, churned) stay in: left out, the first
    models, trained on a few thousand decisions, sent no offer to most contacts and the loop
    earned less (see the README's decision-quality section)."""
    tables = {
        r[0]
        for r in con.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables"
        ).fetchall()
    }
    if not {"learn.outcomes", "decide.decision_log"} <= tables:
        return pd.DataFrame(columns=[*TRAINING_COLUMNS, "revenue"])
    return con.execute(_LABELLED_SQL).df()
