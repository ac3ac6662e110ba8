"""Decision quality against the simulator's ground truth: the regret of the logged policy.

For every live decision in the decision log the simulator's oracle gives the expected margin
of *each* action on the day the decision is applied (the day its CRM task would open a 7-day
window, see :meth:`journey_pipeline.sim.world.World.expected_margin`). From that table
:func:`policy_regret` evaluates, on exactly the same triggered contacts (so every comparison
is paired, with no sampling noise between policies):

- the realised policy: the action it logged;
- the oracle policy: the best action for each contact;
- uniform random: the mean over the actions (its exact expectation, not one draw);
- each static action: the same action for everybody;
- any other policy given as a decision_id -> action mapping (e.g. a replayed baseline).

Values are *incremental* expected margins against ``no_offer`` (the default action), so
``no_offer`` itself scores 0 and the oracle never scores below 0. Regret = oracle - policy,
and the share = policy / oracle. The persistent holdout is the measurement's control group,
not a choice of the policy: its decisions are kept in the per-decision table but left out of
the comparison. Rule-forced decisions (frequency cap, churned, fallback, override) stay in:
they are what the deployed policy did, and ``regret_by_rule`` shows what each rule costs.

Where the oracle values come from
---------------------------------
The oracle is exact only for the world's state on the application day. Decisions whose task
was applied carry exact values in :meth:`World.decision_oracle`; decisions without a task
(``no_offer``, the holdout, capped contacts) do not, so the world is *replayed*: a copy is
created from the same seed, size, start and drift day, and stepped day by day with the tasks
the original world applied (same decision ids, same order), computing the margins of every
decision due that day before the day is simulated. The simulator's randomness is a function
of (seed, day, purpose) and task order, so the replay is the same world; the replayed values
of the applied tasks are checked against the world's own log and a mismatch is an error.

Known limit of the oracle, and how it is checked
------------------------------------------------
The oracle values every action as a window opened on the application day, which freezes the
contact's purchase schedule from its state then. Only offers become CRM tasks; a ``no_offer``
decision (the holdout, a capped contact) is valued as the window its trigger opens, with an
offer the contact still holds working to the end of its own window, which is what the world
does. A new trigger inside the window restarts it from the new state, and the decision taken
on that trigger owns the rest: ``learn.outcomes`` credits each payment to the contact's latest
decision before it, and the oracle values a decision's window up to the application day of
the contact's next decision (``horizon``). So realised rewards and oracle values measure the
same days. The horizon is the one the action taken led to: another action could have moved
the next trigger (a purchase changes the contact's stage and so its cart rate), and the
actions not taken are valued over the same days. :func:`oracle_calibration` measures the
remaining gap per group of matured decisions (realised reward against the oracle's value of
the action taken), so a report can say how far its yardstick is off.

Realised outcomes, for honesty
------------------------------
Expected margins are ground truth only inside the simulator. Next to them the report puts the
realised incremental margin measured the way a real deployment must: matured rewards from
``learn.outcomes`` of the policy's decisions against the holdout's (policy mean - holdout
mean, per policy decision, pooled up to each day), with a 95% normal interval.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from journey_pipeline.actions import ACTION_NAMES, DEFAULT_ACTION
from journey_pipeline.settings import Settings
from journey_pipeline.sim.crm import LocalCrmStore
from journey_pipeline.sim.world import WINDOW_DAYS, World

MARGIN_PREFIX = "margin_"
POLICY = "policy"
ORACLE = "oracle"
UNIFORM = "uniform"
STATIC_PREFIX = "static_"
BANDIT_RULE = "bandit"  # decisions no business rule forced: the learner's own choices
COLD_START = "cold start"  # model_version of decisions taken before any model was trained

# The replay must reproduce the world; margins are sums of a few dozen float64 terms, so any
# real divergence (other decisions, another seed) is far above this.
REPLAY_TOLERANCE = 1e-6
# Tasks are inserted for one day at a time, so the replay applies every open task.
_APPLY_ALL_TASKS = "9999-12-31T00:00:00"
_Z95 = 1.959963984540054

EXCLUSION_REASONS = (
    "shadow",
    "unknown_action",
    "unknown_contact",
    "before_world_start",
    "not_yet_applied",
    "erased_at_application",
)


class OracleReplayError(RuntimeError):
    """The replayed world diverged from the world being evaluated."""


def static_name(action: str) -> str:
    """Report name of the policy that always takes ``action``."""
    return f"{STATIC_PREFIX}{action}"


@dataclass
class RegretReport:
    """Decision quality of a decision log against the oracle.

    - ``decisions``: one row per evaluated live decision (holdout included, flagged): decision_id,
      contact_id, decided_at, applied_date, action, holdout, rule (first business rule that
      forced it, or ``bandit``), model_version (``cold start`` before any model), one
      ``margin_<action>`` column per action (expected margin on the application day),
      oracle_action, oracle_source (``applied_task``, ``replay``, ``world`` or ``given``), and
      one ``incremental_<policy>`` column per compared policy.
    - ``daily``: per application date, over the non-holdout decisions: ``decisions``, and per
      policy the day's incremental margin and its cumulative sum (``cum_<policy>``), plus
      ``regret``, ``cum_regret``, ``share`` and ``cum_share`` of the realised policy.
    - ``totals``: whole-period figures (see :meth:`summary`).
    - ``policies``: the compared policy names, in display order.
    - ``realised_daily`` / ``realised``: the outcome-based view, when outcomes were given.
    - ``excluded``: decisions left out, by reason (see ``EXCLUSION_REASONS``).
    - ``replay_max_error``: largest difference between replayed and logged oracle values of
      applied tasks (None when no replay was needed).
    """

    decisions: pd.DataFrame
    daily: pd.DataFrame
    totals: dict[str, Any]
    policies: list[str]
    actions: list[str]
    realised_daily: pd.DataFrame | None = None
    realised: dict[str, Any] | None = None
    excluded: dict[str, int] = field(default_factory=dict)
    replay_max_error: float | None = None

    def with_policies(self, compare: Mapping[str, pd.Series]) -> RegretReport:
        """This report with more policies evaluated on the same decisions (name -> Series
        decision_id -> action), reusing its oracle margins and realised view."""
        report = regret_from_margins(
            self.decisions,
            compare=compare,
            excluded=self.excluded,
            replay_max_error=self.replay_max_error,
        )
        report.realised_daily, report.realised = self.realised_daily, self.realised
        return report

    @property
    def share(self) -> float:
        """The policy's expected incremental margin as a share of the oracle's (NaN if the
        oracle's is 0)."""
        return float(self.totals["share"])

    @property
    def best_static(self) -> str:
        """Name of the static policy with the highest expected incremental margin."""
        return str(self.totals["best_static"])

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures: decisions evaluated, days, per-policy incremental margin and
        share of the oracle's, regret, best static action, regret by rule, the realised view
        and the exclusions."""
        out = {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in self.totals.items()
        }
        out["excluded"] = dict(self.excluded)
        out["replay_max_error"] = self.replay_max_error
        if self.realised is not None:
            out["realised"] = {
                k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in self.realised.items()
            }
        return out

    def table(self) -> pd.DataFrame:
        """One row per compared policy: expected incremental margin, per decision, share of the
        oracle's and regret, best first."""
        oracle = self.totals["incremental"][ORACLE]
        n = max(int(self.totals["decisions"]), 1)
        rows = [
            {
                "policy": name,
                "incremental_margin": value,
                "per_decision": value / n,
                "share_of_oracle": value / oracle if oracle else float("nan"),
                "regret": oracle - value,
            }
            for name, value in self.totals["incremental"].items()
        ]
        return pd.DataFrame(rows).sort_values("incremental_margin", ascending=False)

    def markdown(self) -> str:
        """The policy table as Markdown (for materialization metadata and reports)."""
        lines = [
            "| policy | expected incremental margin | per decision | share of oracle | regret |",
            "|---|---:|---:|---:|---:|",
        ]
        for row in self.table().itertuples(index=False):
            lines.append(
                f"| {row.policy} | {row.incremental_margin:,.2f} | {row.per_decision:,.3f} | "
                f"{_percent(row.share_of_oracle)} | {row.regret:,.2f} |"
            )
        if self.realised is not None and self.realised.get("policy_decisions"):
            r = self.realised
            lines.append("")
            lines.append(
                f"Realised (outcomes vs holdout, {r['policy_decisions']:,} matured policy "
                f"decisions, {r['holdout_decisions']:,} holdout): incremental margin "
                f"{r['incremental']:,.2f} (95% CI {r['ci_low']:,.2f} .. {r['ci_high']:,.2f}); "
                f"expected on the same decisions {r['expected_incremental']:,.2f}."
            )
        return "\n".join(lines)


def _percent(value: float) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.1f}%"


# ------------------------------------------------------------------------------------------
# Oracle margins per decision
# ------------------------------------------------------------------------------------------


def _first_rule(rules: Any) -> str:
    """The first business rule recorded with a decision, or ``bandit`` if none forced it."""
    if rules is None or (isinstance(rules, float) and math.isnan(rules)):
        return BANDIT_RULE
    if isinstance(rules, str):
        try:
            rules = json.loads(rules)
        except ValueError:
            return rules or BANDIT_RULE
    if isinstance(rules, list | tuple | np.ndarray) and len(rules):
        return str(rules[0])
    return BANDIT_RULE


def _contact_index(contact_ids: pd.Series, n_contacts: int) -> np.ndarray:
    """World contact index of each ``C-nnnnnnn`` id, -1 for ids outside the world."""
    text = contact_ids.astype(str)
    digits = text.str.slice(2)
    valid = text.str.startswith("C-") & digits.str.fullmatch(r"\d+")
    idx = np.full(len(text), -1, dtype=np.int64)
    idx[valid.to_numpy()] = digits[valid].astype(np.int64).to_numpy() - 1
    idx[(idx < 0) | (idx >= n_contacts)] = -1
    return idx


def _margin_columns(actions: list[str]) -> list[str]:
    return [f"{MARGIN_PREFIX}{a}" for a in actions]


def _task_time(decided_at: pd.Timestamp | None, applied: date) -> str:
    """``created_at`` of a replayed task: the decision's own time, as the local CRM stores it
    (ISO seconds, naive UTC), or the application day's midnight when it is unknown."""
    if decided_at is None or pd.isna(decided_at):
        return f"{applied.isoformat()}T00:00:00"
    stamp = pd.Timestamp(decided_at)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return stamp.to_pydatetime().isoformat(timespec="seconds")


def replay_oracle_margins(
    world: World,
    requests: pd.DataFrame,
    *,
    decided_at: Mapping[str, pd.Timestamp] | None = None,
    workdir: str | Path | None = None,
) -> tuple[pd.DataFrame, float]:
    """Exact oracle margins for decisions that opened no CRM task, by replaying ``world``.

    In: the world to evaluate; ``requests`` with columns decision_id, contact_index, day
    (application day index, at most ``world.day``) and horizon (the days of the window that
    count); ``decided_at`` maps decision ids of the
    applied tasks to their decision time (orders the tasks of a day as the CRM did);
    ``workdir`` for the replay's scratch files (default: a temporary directory, removed).
    Out: (frame indexed by decision_id with one ``margin_<action>`` column per action in
    ``ACTION_NAMES`` and ``alive`` (contact not erased on the day), largest absolute
    difference between the replayed and the logged margins of the applied tasks).
    Raises :class:`OracleReplayError` when the replay does not reproduce the world.
    """
    columns = _margin_columns(ACTION_NAMES)
    if requests.empty:
        return pd.DataFrame(
            columns=[*columns, "alive"], index=pd.Index([], name="decision_id")
        ), 0.0
    last_day = int(requests["day"].max())
    if last_day > world.day:
        raise ValueError(f"cannot replay day {last_day}: the world has only reached {world.day}")
    applied = world.decision_oracle()
    applied["day"] = [world.day_index(d) for d in applied["date"]]
    applied = applied[applied["day"] < last_day]
    decided_at = decided_at or {}
    tasks_by_day = {day: rows for day, rows in applied.groupby("day")}
    due_by_day = {day: rows for day, rows in requests.groupby("day")}

    replica = World.create(world.n_initial, world.seed, world.start_date, drift_day=world.drift_day)
    scratch = Path(tempfile.mkdtemp(dir=workdir, prefix="oracle-replay-"))
    parts: list[pd.DataFrame] = []
    try:
        landing = scratch / "landing"
        with LocalCrmStore(scratch / "crm.db") as crm:
            for day in range(last_day + 1):
                due = due_by_day.get(day)
                if due is not None:
                    idx = due["contact_index"].to_numpy(dtype=np.int64)
                    horizon = due["horizon"].to_numpy(dtype=np.int64)
                    margins = np.column_stack(
                        [replica.expected_margin(idx, a, day, horizon) for a in ACTION_NAMES]
                    )
                    part = pd.DataFrame(margins, columns=columns, index=due["decision_id"])
                    part["alive"] = replica.contacts["alive"][idx]
                    parts.append(part)
                if day == last_day:
                    break
                tasks = tasks_by_day.get(day)
                if tasks is not None:
                    day_date = world.start_date + timedelta(days=day)
                    for row in tasks.itertuples(index=False):
                        crm.create_task(
                            row.decision_id,
                            row.contact_id,
                            row.action,
                            _task_time(decided_at.get(row.decision_id), day_date),
                        )
                report = replica.step(crm, landing, task_cutoff=_APPLY_ALL_TASKS)
                report.events_path.unlink(missing_ok=True)  # only the state matters here
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    replayed = replica.decision_oracle().set_index("decision_id")
    logged = applied.set_index("decision_id")
    logged_columns = [f"expected_margin_{a}" for a in ACTION_NAMES]
    common = logged.index.intersection(replayed.index)
    if len(common) != len(logged):
        raise OracleReplayError(
            f"the replay applied {len(common)} of the world's {len(logged)} tasks: the world "
            "skipped or applied tasks differently (was it created with other parameters?)"
        )
    error = (
        float(
            np.abs(
                replayed.loc[common, logged_columns].to_numpy()
                - logged.loc[common, logged_columns].to_numpy()
            ).max()
        )
        if len(common)
        else 0.0
    )
    if error > REPLAY_TOLERANCE:
        raise OracleReplayError(
            f"the replayed world diverged from the evaluated one (oracle values differ by up to "
            f"{error:.3g}); the world cannot be reproduced from its seed and applied tasks"
        )
    return pd.concat(parts), error


def decision_margins(
    decisions: pd.DataFrame,
    world: World,
    *,
    oracle_margins: pd.DataFrame | None = None,
    workdir: str | Path | None = None,
) -> tuple[pd.DataFrame, dict[str, int], float | None]:
    """The expected margin of every action for every live decision on its application day.

    In: decision-log rows (decision_id, contact_id, decided_at, action, holdout; optional mode,
    rules_applied), the world they were taken in, optionally ``oracle_margins`` already known
    (indexed by decision_id, ``margin_<action>`` columns, e.g. captured on the day), and a
    scratch directory for the replay. The application day is the date of ``decided_at`` (a
    day's decisions are taken at 00:00 of the next day, and the simulator applies their tasks
    that day) or, for applied tasks, the day the world logged.
    Out: (per-decision frame, exclusions by reason, replay error or None); see
    :class:`RegretReport` for the columns.
    """
    required = {"decision_id", "contact_id", "decided_at", "action", "holdout"}
    missing = required - set(decisions.columns)
    if missing:
        raise ValueError(f"decisions lack the columns {sorted(missing)}")
    excluded = dict.fromkeys(EXCLUSION_REASONS, 0)
    frame = decisions.drop_duplicates("decision_id").copy()
    if "mode" in frame.columns:
        live = frame["mode"].fillna("live").eq("live")
        excluded["shadow"] = int((~live).sum())
        frame = frame[live]
    known_action = frame["action"].isin(ACTION_NAMES)
    excluded["unknown_action"] = int((~known_action).sum())
    frame = frame[known_action]
    frame["contact_index"] = _contact_index(frame["contact_id"], world.n_contacts)
    known_contact = frame["contact_index"] >= 0
    excluded["unknown_contact"] = int((~known_contact).sum())
    frame = frame[known_contact].copy()

    decided = pd.to_datetime(frame["decided_at"], utc=True).dt.tz_localize(None)
    frame["decided_at"] = decided
    frame["applied_date"] = decided.dt.normalize().dt.date
    applied = world.decision_oracle().set_index("decision_id")
    logged = frame["decision_id"].isin(applied.index)
    frame.loc[logged, "applied_date"] = applied.loc[
        frame.loc[logged, "decision_id"], "date"
    ].to_numpy()
    frame["day"] = [world.day_index(d) for d in frame["applied_date"]]
    # A decision's window ends where the contact's next live decision starts one (last touch,
    # as learn.outcomes credits payments, and a trigger restarts the simulator's window):
    # the oracle values the days before it.
    order = frame.sort_values(["contact_index", "decided_at", "decision_id"])
    following = order.groupby("contact_index")["day"].shift(-1)
    frame["horizon"] = (
        (following - order["day"]).clip(0, WINDOW_DAYS).fillna(WINDOW_DAYS).astype(np.int64)
    )
    before = frame["day"] < 0
    excluded["before_world_start"] = int(before.sum())
    future = frame["day"] > world.day
    excluded["not_yet_applied"] = int(future.sum())
    frame = frame[~before & ~future].reset_index(drop=True)
    full = frame["horizon"] >= WINDOW_DAYS

    columns = _margin_columns(ACTION_NAMES)
    values = pd.DataFrame(np.nan, index=frame["decision_id"], columns=columns)
    source = pd.Series("", index=frame["decision_id"], dtype=object)
    alive = pd.Series(True, index=frame["decision_id"])

    # Logged and given values cover the whole window; shortened windows are replayed.
    from_log = frame.loc[frame["decision_id"].isin(applied.index) & full, "decision_id"]
    if len(from_log):
        values.loc[from_log, columns] = applied.loc[
            from_log, [f"expected_margin_{a}" for a in ACTION_NAMES]
        ].to_numpy()
        source.loc[from_log] = "applied_task"
    if oracle_margins is not None and len(oracle_margins):
        given = frame["decision_id"][
            frame["decision_id"].isin(oracle_margins.index) & full & (source.to_numpy() == "")
        ]
        values.loc[given, columns] = oracle_margins.loc[given, columns].to_numpy()
        source.loc[given] = "given"
    todo = frame[(source.to_numpy() == "")]
    today = todo[todo["day"] == world.day]
    if len(today):
        idx = today["contact_index"].to_numpy()
        values.loc[today["decision_id"], columns] = np.column_stack(
            [
                world.expected_margin(idx, a, world.day, today["horizon"].to_numpy())
                for a in ACTION_NAMES
            ]
        )
        alive.loc[today["decision_id"]] = world.contacts["alive"][idx]
        source.loc[today["decision_id"]] = "world"
    past = todo[todo["day"] < world.day]
    replay_error: float | None = None
    if len(past):
        decided_by_id = dict(zip(frame["decision_id"], frame["decided_at"], strict=True))
        replayed, replay_error = replay_oracle_margins(
            world,
            past[["decision_id", "contact_index", "day", "horizon"]],
            decided_at=decided_by_id,
            workdir=workdir,
        )
        values.loc[replayed.index, columns] = replayed[columns].to_numpy()
        alive.loc[replayed.index] = replayed["alive"].to_numpy()
        source.loc[replayed.index] = "replay"

    frame = frame.set_index("decision_id")
    frame[columns] = values
    frame["oracle_source"] = source
    frame = frame[alive.reindex(frame.index).to_numpy(dtype=bool)]
    excluded["erased_at_application"] = int((~alive).sum())
    frame["holdout"] = frame["holdout"].astype(bool)
    frame["rule"] = (
        [_first_rule(r) for r in frame["rules_applied"]]
        if "rules_applied" in frame.columns
        else BANDIT_RULE
    )
    # Which model decided: the policy explores uniformly until a first champion exists.
    versions = frame["model_version"] if "model_version" in frame.columns else None
    frame["model_version"] = (
        COLD_START
        if versions is None
        else versions.astype(object).where(versions.notna(), COLD_START).astype(str)
    )
    matrix = frame[columns].to_numpy()
    frame["oracle_action"] = np.array(ACTION_NAMES, dtype=object)[matrix.argmax(axis=1)]
    keep = [
        "contact_id",
        "decided_at",
        "applied_date",
        "action",
        "holdout",
        "rule",
        "model_version",
        *columns,
        "oracle_action",
        "oracle_source",
    ]
    out = frame[keep].reset_index().sort_values(["applied_date", "decision_id"])
    return out.reset_index(drop=True), excluded, replay_error


# ------------------------------------------------------------------------------------------
# Policy values and regret
# ------------------------------------------------------------------------------------------


def incremental_values(
    margins: pd.DataFrame, actions_taken: Mapping[str, pd.Series | np.ndarray]
) -> pd.DataFrame:
    """Per-decision incremental expected margin (against ``no_offer``) of several policies.

    In: the per-decision frame of :func:`decision_margins` and, per named policy, the action it
    takes for each row (a Series indexed by decision_id, or an array in row order). The oracle,
    uniform random and every static action are always added.
    Out: one column per policy (oracle, uniform, the static actions, then the given ones), rows
    aligned with ``margins``.
    """
    columns = _margin_columns(ACTION_NAMES)
    matrix = margins[columns].to_numpy(dtype=np.float64)
    incremental = matrix - matrix[:, [ACTION_NAMES.index(DEFAULT_ACTION)]]
    out = {
        ORACLE: incremental.max(axis=1),
        UNIFORM: incremental.mean(axis=1),
        **{static_name(a): incremental[:, j] for j, a in enumerate(ACTION_NAMES)},
    }
    code = {a: j for j, a in enumerate(ACTION_NAMES)}
    rows = np.arange(len(margins))
    for name, taken in actions_taken.items():
        if isinstance(taken, pd.Series):
            aligned = taken.reindex(margins["decision_id"])
            if aligned.isna().any():
                raise ValueError(
                    f"policy {name!r} has no action for {int(aligned.isna().sum())} of the "
                    "evaluated decisions"
                )
            taken = aligned.to_numpy()
        taken = np.asarray(taken, dtype=object)
        unknown = set(taken) - set(code)
        if unknown:
            raise ValueError(f"policy {name!r} takes unknown actions {sorted(unknown)}")
        out[name] = incremental[rows, [code[a] for a in taken]]
    return pd.DataFrame(out, index=margins.index)


def _daily(evaluated: pd.DataFrame, values: pd.DataFrame, policies: list[str]) -> pd.DataFrame:
    """Per application day: decisions, each policy's incremental margin and its cumulative sum,
    the policy's regret and share of the oracle (daily and cumulative)."""
    per_day = values[policies].groupby(evaluated["applied_date"].to_numpy()).sum()
    per_day.insert(0, "decisions", evaluated.groupby("applied_date").size().to_numpy())
    per_day.index.name = "applied_date"
    for name in policies:
        per_day[f"cum_{name}"] = per_day[name].cumsum()
    per_day["regret"] = per_day[ORACLE] - per_day[POLICY]
    per_day["cum_regret"] = per_day["regret"].cumsum()
    with np.errstate(divide="ignore", invalid="ignore"):
        per_day["share"] = per_day[POLICY] / per_day[ORACLE].replace(0.0, np.nan)
        per_day["cum_share"] = per_day[f"cum_{POLICY}"] / per_day[f"cum_{ORACLE}"].replace(
            0.0, np.nan
        )
    return per_day


def _by_group(groups: pd.Series, values: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per group (e.g. model version): decisions, the policy's and the oracle's incremental
    margin and the share."""
    out = {}
    for name, rows in values.groupby(groups.to_numpy()):
        policy, oracle = float(rows[POLICY].sum()), float(rows[ORACLE].sum())
        out[str(name)] = {
            "decisions": len(rows),
            "policy": policy,
            "oracle": oracle,
            "share": policy / oracle if oracle else float("nan"),
        }
    return out


def realised_incremental(outcomes: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Realised incremental margin of the policy against the holdout, from outcomes.

    In: ``learn.outcomes`` rows (decision_id, decision_date, holdout, reward, matured); only
    matured rows with a reward count. Out: (per decision date: policy_decisions,
    policy_reward, holdout_decisions, holdout_reward and ``cum_incremental``, the cumulative
    estimate policy reward - policy decisions x holdout mean reward, the holdout pooled up to
    that day; totals: decisions per arm, mean rewards, ``incremental`` with a 95% normal
    interval ``ci_low``/``ci_high``, and ``uplift_per_decision``).
    """
    rows = outcomes[outcomes["matured"].astype(bool) & outcomes["reward"].notna()].copy()
    rows["holdout"] = rows["holdout"].astype(bool)
    rows["decision_date"] = pd.to_datetime(rows["decision_date"]).dt.date
    policy, holdout = rows[~rows["holdout"]], rows[rows["holdout"]]
    daily = pd.DataFrame(
        {
            "policy_decisions": policy.groupby("decision_date").size(),
            "policy_reward": policy.groupby("decision_date")["reward"].sum(),
            "holdout_decisions": holdout.groupby("decision_date").size(),
            "holdout_reward": holdout.groupby("decision_date")["reward"].sum(),
        }
    ).fillna(0.0)
    daily.index.name = "applied_date"
    daily = daily.sort_index()
    cum_policy_n = daily["policy_decisions"].cumsum()
    cum_holdout_n = daily["holdout_decisions"].cumsum()
    holdout_mean = daily["holdout_reward"].cumsum() / cum_holdout_n.replace(0, np.nan)
    daily["cum_incremental"] = daily["policy_reward"].cumsum() - cum_policy_n * holdout_mean

    n_p, n_h = len(policy), len(holdout)
    mean_p = float(policy["reward"].mean()) if n_p else float("nan")
    mean_h = float(holdout["reward"].mean()) if n_h else float("nan")
    uplift = mean_p - mean_h
    var_p = float(policy["reward"].var(ddof=1)) if n_p > 1 else float("nan")
    var_h = float(holdout["reward"].var(ddof=1)) if n_h > 1 else float("nan")
    se = math.sqrt(var_p / n_p + var_h / n_h) if n_p > 1 and n_h > 1 else float("nan")
    totals = {
        "policy_decisions": n_p,
        "holdout_decisions": n_h,
        "policy_mean_reward": mean_p,
        "holdout_mean_reward": mean_h,
        "uplift_per_decision": uplift,
        "incremental": uplift * n_p,
        "ci_low": (uplift - _Z95 * se) * n_p,
        "ci_high": (uplift + _Z95 * se) * n_p,
    }
    return daily, totals


def oracle_calibration(decisions: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    """How well the oracle predicts what actually happened: realised matured reward against
    the oracle's expected margin of the action taken, per group of decisions.

    In: the per-decision frame of a :class:`RegretReport` (decision_id, action, holdout, rule
    and the ``margin_<action>`` columns) and ``learn.outcomes`` rows (decision_id, reward,
    matured). Groups: ``holdout``, else ``<action> (<rule>)``. Out: one row per group with
    ``decisions``, ``realised`` and ``oracle`` (mean per decision), ``gap`` (realised -
    oracle), ``se`` (standard error of the realised mean) and ``z`` (gap / se). A gap many
    standard errors from 0 means the oracle is not the world's expectation for that group.
    """
    matured = outcomes.loc[
        outcomes["matured"].astype(bool) & outcomes["reward"].notna(), ["decision_id", "reward"]
    ]
    rows = decisions.merge(matured, on="decision_id", how="inner")
    columns = [f"{MARGIN_PREFIX}{a}" for a in ACTION_NAMES]
    known = rows["action"].isin(ACTION_NAMES)
    rows = rows[known].reset_index(drop=True)
    codes = pd.Index(ACTION_NAMES).get_indexer(rows["action"])
    rows["oracle"] = rows[columns].to_numpy(dtype=np.float64)[np.arange(len(rows)), codes]
    rows["group"] = np.where(
        rows["holdout"].astype(bool), "holdout", rows["action"] + " (" + rows["rule"] + ")"
    )
    table = rows.groupby("group").agg(
        decisions=("reward", "size"),
        realised=("reward", "mean"),
        oracle=("oracle", "mean"),
        sd=("reward", "std"),
    )
    table["gap"] = table["realised"] - table["oracle"]
    table["se"] = table["sd"] / np.sqrt(table["decisions"])
    table["z"] = table["gap"] / table["se"].replace(0.0, np.nan)
    return table.drop(columns="sd").sort_values("decisions", ascending=False)


def policy_regret(
    decisions: pd.DataFrame,
    world: World,
    *,
    outcomes: pd.DataFrame | None = None,
    compare: Mapping[str, pd.Series] | None = None,
    oracle_margins: pd.DataFrame | None = None,
    workdir: str | Path | None = None,
) -> RegretReport:
    """Regret of the logged policy against the simulator's oracle, with baselines.

    In: decision-log rows (decision_id, contact_id, decided_at, action, holdout; mode and
    rules_applied used when present), the world they were taken in (state after the run),
    optionally ``learn.outcomes`` rows for the realised view, other policies to evaluate on the
    same decisions (name -> Series decision_id -> action, covering every non-holdout
    decision), oracle margins already known, and a scratch directory for the replay.
    Out: a :class:`RegretReport`. Raises ``ValueError`` when no decision can be evaluated.
    """
    margins, excluded, replay_error = decision_margins(
        decisions, world, oracle_margins=oracle_margins, workdir=workdir
    )
    return regret_from_margins(
        margins,
        outcomes=outcomes,
        compare=compare,
        excluded=excluded,
        replay_max_error=replay_error,
    )


def regret_from_margins(
    margins: pd.DataFrame,
    *,
    outcomes: pd.DataFrame | None = None,
    compare: Mapping[str, pd.Series] | None = None,
    excluded: Mapping[str, int] | None = None,
    replay_max_error: float | None = None,
) -> RegretReport:
    """The report of :func:`policy_regret` from per-decision oracle margins already computed
    (the frame of :func:`decision_margins`); ``excluded`` and ``replay_max_error`` are carried
    into the report as given."""
    margin_columns = ["decision_id", "contact_id", "decided_at", "applied_date", "action"]
    margin_columns += ["holdout", "rule", "model_version", *_margin_columns(ACTION_NAMES)]
    margin_columns.append("oracle_action")
    margins = margins[[*margin_columns, "oracle_source"]].copy()
    evaluated = margins[~margins["holdout"]].reset_index(drop=True)
    if evaluated.empty:
        raise ValueError("no live, non-holdout decision of this log can be evaluated")
    compare = dict(compare or {})
    clash = {POLICY, ORACLE, UNIFORM, *map(static_name, ACTION_NAMES)} & set(compare)
    if clash:
        raise ValueError(f"compared policy names {sorted(clash)} are reserved")
    values = incremental_values(evaluated, {POLICY: evaluated["action"].to_numpy(), **compare})
    statics = [static_name(a) for a in ACTION_NAMES]
    policies = [POLICY, ORACLE, UNIFORM, *statics, *compare]
    values = values[policies]
    for name in policies:
        margins[f"incremental_{name}"] = np.nan
    margins.loc[~margins["holdout"].to_numpy(), [f"incremental_{p}" for p in policies]] = (
        values.to_numpy()
    )

    daily = _daily(evaluated, values, policies)
    sums = {name: float(values[name].sum()) for name in policies}
    oracle = sums[ORACLE]
    best_static = max(statics, key=lambda s: sums[s])
    regret_by_rule = (values[ORACLE] - values[POLICY]).groupby(evaluated["rule"].to_numpy()).sum()
    learner = evaluated["rule"].eq(BANDIT_RULE).to_numpy()
    learner_oracle = float(values.loc[learner, ORACLE].sum())
    totals: dict[str, Any] = {
        "decisions": len(evaluated),
        "holdout_decisions": int(margins["holdout"].sum()),
        "days": len(daily),
        "first_date": str(daily.index.min()),
        "last_date": str(daily.index.max()),
        "incremental": sums,
        "per_decision": {k: v / len(evaluated) for k, v in sums.items()},
        "share_of_oracle": {k: (v / oracle if oracle else float("nan")) for k, v in sums.items()},
        "policy": sums[POLICY],
        "oracle": oracle,
        "regret": oracle - sums[POLICY],
        "share": sums[POLICY] / oracle if oracle else float("nan"),
        "best_static": best_static,
        "best_static_value": sums[best_static],
        "oracle_action_mix": evaluated["oracle_action"].value_counts().to_dict(),
        "policy_action_mix": evaluated["action"].value_counts().to_dict(),
        "regret_by_rule": {str(k): float(v) for k, v in regret_by_rule.items()},
        "decisions_by_rule": evaluated["rule"].value_counts().to_dict(),
        "bandit_share": (
            float(values.loc[learner, POLICY].sum()) / learner_oracle
            if learner_oracle
            else float("nan")
        ),
        "oracle_sources": margins["oracle_source"].value_counts().to_dict(),
        "by_model_version": _by_group(evaluated["model_version"], values),
    }

    realised_daily = realised = None
    if outcomes is not None and len(outcomes):
        realised_daily, realised = realised_incremental(outcomes)
        matured = outcomes.loc[
            outcomes["matured"].astype(bool)
            & outcomes["reward"].notna()
            & ~outcomes["holdout"].astype(bool),
            "decision_id",
        ]
        on_matured = values[POLICY][evaluated["decision_id"].isin(matured).to_numpy()]
        realised["expected_incremental"] = float(on_matured.sum())
        realised["expected_decisions"] = len(on_matured)
    return RegretReport(
        decisions=margins,
        daily=daily,
        totals=totals,
        policies=policies,
        actions=list(ACTION_NAMES),
        realised_daily=realised_daily,
        realised=realised,
        excluded=dict(excluded or {}),
        replay_max_error=replay_max_error,
    )


def load_regret_report(
    settings: Settings, *, compare: Mapping[str, pd.Series] | None = None
) -> RegretReport:
    """:func:`policy_regret` for the run under ``settings``: the live decision log and (when
    built) ``learn.outcomes`` from the warehouse, the world saved in ``settings.sim_state_dir``.
    """
    from journey_pipeline.decide.log import read_decisions
    from journey_pipeline.learn.outcomes import load_outcomes
    from journey_pipeline.warehouse import warehouse

    if not World.exists(settings.sim_state_dir):
        raise FileNotFoundError(
            f"no simulated world in {settings.sim_state_dir}: regret needs the simulator's "
            "ground truth (run `journey demo` or `journey simulate` first)"
        )
    world = World.load(settings.sim_state_dir)
    with warehouse(settings.warehouse_path) as con:
        decisions = read_decisions(con, mode="live")
        tables = {
            f"{s}.{t}"
            for s, t in con.execute(
                "SELECT table_schema, table_name FROM information_schema.tables"
            ).fetchall()
        }
        outcomes = load_outcomes(con) if "learn.outcomes" in tables else None
    return policy_regret(
        decisions, world, outcomes=outcomes, compare=compare, workdir=settings.home
    )


# ------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------


def weekly_shares(report: RegretReport) -> list[dict[str, Any]]:
    """The policy's share of the oracle per 7 application days (from the first), beside the best
    static action's on the same decisions, with the model versions that took them: how the loop
    fares around a drift and after each retrain. Holdout decisions are left out."""
    evaluated = report.decisions[~report.decisions["holdout"]]
    days = sorted(evaluated["applied_date"].unique())
    rows = []
    for start in range(0, len(days), 7):
        week = days[start : start + 7]
        mask = evaluated["applied_date"].isin(week)
        oracle = float(evaluated.loc[mask, f"incremental_{ORACLE}"].sum())
        rows.append(
            {
                "first_day": str(week[0]),
                "last_day": str(week[-1]),
                "decisions": int(mask.sum()),
                "share": float(evaluated.loc[mask, f"incremental_{POLICY}"].sum()) / oracle
                if oracle
                else None,
                "best_static_share": max(
                    float(evaluated.loc[mask, f"incremental_static_{a}"].sum())
                    for a in report.actions
                )
                / oracle
                if oracle
                else None,
                "models": sorted(evaluated.loc[mask, "model_version"].astype(str).unique()),
            }
        )
    return rows


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


_STATIC_COLOURS = ("tab:purple", "tab:brown", "tab:olive", "tab:pink", "tab:cyan")
_COMPARED_COLOURS = ("tab:green", "tab:orange", "tab:red", "gold")


def _styles(report: RegretReport) -> dict[str, dict[str, Any]]:
    """Line style of every compared policy, the same in both plots."""
    styles: dict[str, dict[str, Any]] = {
        POLICY: {"color": "tab:blue", "linewidth": 2.6, "label": "policy (logged actions)"},
        ORACLE: {"color": "black", "linewidth": 2.0, "linestyle": "--", "label": "oracle"},
        UNIFORM: {"color": "tab:gray", "linewidth": 1.5, "label": "uniform random"},
    }
    statics = [p for p in report.policies if p.startswith(STATIC_PREFIX)]
    for k, name in enumerate(statics):
        styles[name] = {
            "color": _STATIC_COLOURS[k % len(_STATIC_COLOURS)],
            "linewidth": 1.3,
            "linestyle": ":",
            "label": f"always {name[len(STATIC_PREFIX) :]}",
        }
    compared = [p for p in report.policies if p not in styles]
    for k, name in enumerate(compared):
        colour = _COMPARED_COLOURS[k % len(_COMPARED_COLOURS)]
        styles[name] = {"color": colour, "linewidth": 1.8, "label": name}
    return styles


def _date_axis(ax: Any) -> None:
    import matplotlib.dates as mdates

    ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d"))


def plot_cumulative(report: RegretReport, path: str | Path) -> Path:
    """PNG of the cumulative expected incremental margin (against ``no_offer``) of the policy,
    the oracle, uniform random, each static action and any compared policy, by application
    day, with the realised policy-vs-holdout incremental margin when outcomes were given.
    Out: the path written."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    daily = report.daily
    days = pd.to_datetime(pd.Index(daily.index))
    styles = _styles(report)
    fig, ax = plt.subplots(figsize=(9, 5.2))
    for name in report.policies:
        if name == static_name(DEFAULT_ACTION):
            continue  # identically zero: it is the reference line
        ax.plot(days, daily[f"cum_{name}"], **styles[name])
    if report.realised_daily is not None and report.realised_daily["cum_incremental"].notna().any():
        realised = report.realised_daily
        ax.plot(
            pd.to_datetime(pd.Index(realised.index)),
            realised["cum_incremental"],
            color="crimson",
            linewidth=1.6,
            linestyle="-.",
            marker="o",
            markersize=3,
            label="policy, realised vs holdout (matured)",
        )
    ax.axhline(0.0, color="black", linewidth=0.8, label="no_offer (reference)")
    ax.set_title(
        "Cumulative incremental margin vs no_offer: "
        f"policy at {_percent(report.share)} of the oracle"
    )
    ax.set_xlabel("decision applied on")
    ax.set_ylabel("incremental margin (USD)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    _date_axis(ax)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_regret(report: RegretReport, path: str | Path) -> Path:
    """PNG with two panels: cumulative regret (oracle minus each policy) of the policy, uniform
    random, the best static action and any compared policy; and the policy's share of the
    oracle's incremental margin, per day and cumulative. Out: the path written."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    daily = report.daily
    days = pd.to_datetime(pd.Index(daily.index))
    extras = [
        p
        for p in report.policies
        if p not in (POLICY, ORACLE, UNIFORM) and not p.startswith(STATIC_PREFIX)
    ]
    styles = _styles(report)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for name in [POLICY, UNIFORM, report.best_static, *extras]:
        regret = daily[f"cum_{ORACLE}"] - daily[f"cum_{name}"]
        top.plot(days, regret, **styles[name])
    top.set_title("Cumulative regret against the oracle (lower is better)")
    top.set_ylabel("regret (USD)")
    top.grid(alpha=0.3)
    top.legend(fontsize=8, loc="upper left")
    bottom.bar(
        days,
        100 * daily["share"].fillna(0.0),
        width=0.8,
        align="center",
        color="tab:blue",
        alpha=0.35,
        label="policy share, that day",
    )
    bottom.plot(
        days,
        100 * daily["cum_share"],
        color="tab:blue",
        linewidth=2.2,
        label="policy share, cumulative",
    )
    bottom.axhline(100.0, color="black", linestyle="--", linewidth=1.0, label="oracle")
    # A day whose oracle gain is tiny gives a huge share either way; keep the scale readable.
    bottom.set_ylim(max(-100.0, float(np.nanmin([0.0, *(100 * daily["share"])])) - 10), 150.0)
    bottom.set_ylabel("% of the oracle's incremental margin")
    bottom.set_xlabel("decision applied on")
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize=8, loc="lower right")
    _date_axis(bottom)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
