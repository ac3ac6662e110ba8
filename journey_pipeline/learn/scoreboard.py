"""The scoreboard: the few north-star metrics and the SLOs, each measured by the loop itself.

North stars: incremental margin per user and conversion lift of the policy against the
persistent holdout, and 30-day retention of decided contacts (policy vs holdout). SLOs:
decision latency (measured per batch), feature freshness, calibration error of the champion,
event lag (landing file written -> ingested) and compute cost per 1M events (measured run time
of the daily loop x a configurable price per vCPU-hour).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from journey_pipeline.features.contract import MART  # noqa: E402

RETENTION_DAYS = 30

_RETENTION_SQL = f"""
WITH first_decision AS (
    SELECT contact_id, min(decided_at) AS decided_at, bool_or(holdout) AS holdout
    FROM decide.decision_log WHERE mode = 'live' GROUP BY contact_id
),
horizon AS (SELECT max(occurred_at) AS as_of FROM raw.events),
lost AS (
    SELECT contact_id, min(occurred_at) AS lost_at FROM raw.events
    WHERE event_type = 'contact.deleted'
       OR (event_type IN ('contact.updated') AND lifecycle_stage = 'churned')
    GROUP BY contact_id
)
SELECT f.holdout,
       count(*) AS contacts,
       avg(CASE WHEN l.lost_at IS NOT NULL
                 AND l.lost_at <= f.decided_at + INTERVAL {RETENTION_DAYS} DAY
                THEN 0 ELSE 1 END) AS retention
FROM first_decision f CROSS JOIN horizon h
LEFT JOIN lost l USING (contact_id)
WHERE f.decided_at + INTERVAL {RETENTION_DAYS} DAY <= h.as_of
GROUP BY f.holdout
"""


@dataclass
class Metric:
    name: str
    value: float | None
    unit: str
    kind: str  # north_star | slo
    target: str = ""
    note: str = ""

    @property
    def status(self) -> str:
        if self.value is None or (isinstance(self.value, float) and np.isnan(self.value)):
            return "no data"
        return "measured"


def retention(con: duckdb.DuckDBPyConnection) -> dict[bool, tuple[int, float]]:
    """30-day retention of decided contacts by holdout flag: {holdout: (contacts, share)};
    only contacts whose 30 days have passed by the newest event count."""
    rows = con.execute(_RETENTION_SQL).fetchall()
    return {bool(h): (int(n), float(r)) for h, n, r in rows}


def feature_freshness_hours(con: duckdb.DuckDBPyConnection) -> float | None:
    """Hours between the newest event and the newest feature cutoff (in the loop's own
    clock: simulated worlds run in the past)."""
    row = con.execute(
        f"SELECT (SELECT max(occurred_at) FROM raw.events), (SELECT max(feature_ts) FROM {MART})"
    ).fetchone()
    if row[0] is None or row[1] is None:
        return None
    return round((row[0] - row[1]).total_seconds() / 3600.0, 2)


def build_scoreboard(
    con: duckdb.DuckDBPyConnection,
    experiment_metrics: dict[str, float] | None,
    champion_ece: float | None,
    loop_run_seconds: float | None,
    *,
    price_per_vcpu_hour: float = 0.05,
    vcpus: int = 2,
) -> list[Metric]:
    """Collect every scoreboard figure from the warehouse and the given measurements.

    ``experiment_metrics``: :meth:`ExperimentAnalysis.metrics` of the live policy;
    ``champion_ece``: the champion's validation calibration error; ``loop_run_seconds``: summed
    wall time of successful daily-loop runs (from the Dagster instance). Figures without data
    are returned with value None ("no data"), never a made-up number.
    """
    exp = experiment_metrics or {}
    metrics = [
        Metric(
            "incremental margin per user",
            exp.get("margin_per_user_lift"),
            "currency/user",
            "north_star",
            "> 0",
            "policy minus persistent holdout",
        ),
        Metric("conversion lift", exp.get("conversion_lift"), "share points", "north_star", "> 0"),
    ]
    kept = retention(con)
    policy_ret, holdout_ret = kept.get(False), kept.get(True)
    metrics.append(
        Metric(
            "30-day retention (policy)",
            policy_ret[1] if policy_ret else None,
            "share",
            "north_star",
            "",
            f"holdout: {holdout_ret[1]:.3f} of {holdout_ret[0]}"
            if holdout_ret
            else "holdout: no data",
        )
    )
    timings = con.execute(
        "SELECT stage, sum(seconds), sum(items), median(lag_seconds) FROM ops.stage_timings GROUP BY stage"
    ).fetchall()
    by_stage = {stage: (seconds, items, lag) for stage, seconds, items, lag in timings}
    decide = by_stage.get("decide")
    metrics.append(
        Metric(
            "decision latency (batch, per decision)",
            round(1000.0 * decide[0] / decide[1], 3) if decide and decide[1] else None,
            "ms",
            "slo",
            "<= 2 ms",
            "online feature read + policy, per decision in the daily batch",
        )
    )
    metrics.append(
        Metric("feature freshness", feature_freshness_hours(con), "hours", "slo", "<= 24")
    )
    metrics.append(
        Metric("calibration error (champion ECE)", champion_ece, "probability", "slo", "<= 0.05")
    )
    ingest = by_stage.get("ingest")
    metrics.append(
        Metric(
            "event lag (median)",
            round(ingest[2], 2) if ingest and ingest[2] is not None else None,
            "seconds",
            "slo",
            "<= 300",
            "landing file written -> events queryable",
        )
    )
    events = ingest[1] if ingest else 0
    cost = (
        loop_run_seconds / 3600.0 * vcpus * price_per_vcpu_hour / events * 1e6
        if loop_run_seconds and events
        else None
    )
    metrics.append(
        Metric(
            "compute cost per 1M events",
            round(cost, 4) if cost is not None else None,
            "USD",
            "slo",
            "",
            f"measured daily-loop run time x {vcpus} vCPU x ${price_per_vcpu_hour}/vCPU-hour",
        )
    )
    return metrics


def scoreboard_frame(metrics: list[Metric]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "metric": m.name,
                "value": m.value,
                "unit": m.unit,
                "kind": m.kind,
                "target": m.target,
                "status": m.status,
                "note": m.note,
            }
            for m in metrics
        ]
    )


def plot_scoreboard(metrics: list[Metric], path) -> None:
    """One figure, one panel per metric with its value (or 'no data')."""
    fig, axes = plt.subplots(
        2, (len(metrics) + 1) // 2, figsize=(3.2 * ((len(metrics) + 1) // 2), 4.2)
    )
    for ax, m in zip(axes.ravel(), metrics, strict=False):
        ax.axis("off")
        text = "no data" if m.status == "no data" else f"{m.value:,.4g}"
        ax.text(
            0.5,
            0.6,
            text,
            ha="center",
            va="center",
            fontsize=18,
            color="#1f6f43" if m.kind == "north_star" else "#1d4e89",
        )
        ax.text(0.5, 0.28, f"{m.name}\n[{m.unit}]", ha="center", va="center", fontsize=8)
    for ax in axes.ravel()[len(metrics) :]:
        ax.axis("off")
    fig.suptitle("journey-pipeline scoreboard")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
