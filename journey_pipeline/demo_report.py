"""The demo's HTML report: one self-contained page that shows the loop working.

:func:`write_demo_report` reads what a run stored and writes ``JOURNEY_HOME/reports/demo.html``
(``data/reports/demo.html`` by default). Every figure comes from the run's stored results:

- decisions by action per day, and the model version that took each day's live decisions:
  the decision log (``decide.decision_log``);
- the realised incremental margin of the policy against the persistent holdout: matured
  rewards in ``learn.outcomes`` (:func:`journey_pipeline.learn.regret.realised_incremental`);
- the policy against the oracle, uniform random and each static action: expected margins from
  the simulator's ground truth for the logged decisions
  (:func:`journey_pipeline.learn.regret.load_regret_report`);
- drift share per day: the history the ``drift_report`` asset keeps
  (``reports/drift_history.parquet``); retrains: the ``retrain_job`` runs in the Dagster
  instance, with their trigger and simulated day (run tags) and the challenger and champion
  versions their ``reward_model`` and ``champion_model`` materializations recorded;
- champion moves: ``decide.control_events``; the scoreboard: ``reports/scoreboard.parquet``;
- the champion's calibration plot: the artifact of its MLflow training run.

The page embeds its plots as base64 PNG and needs nothing from the network. The series it
plots are embedded as JSON too (``<script type="application/json" id="demo-report-data">``),
so a test or a user can check every figure against the warehouse.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from journey_pipeline.settings import Settings

REPORT_NAME = "demo.html"
DATA_ELEMENT_ID = "demo-report-data"
RETRAIN_JOB = "retrain_job"
DEMO_DAY_TAG = "journey/demo_day"
TRIGGER_TAG = "journey/trigger"
COLD_START = "cold start"


# ------------------------------------------------------------------------------ collection
def _clean(value: Any) -> Any:
    """JSON-ready: NaN/inf -> None, numpy scalars -> Python, dates -> ISO strings."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _warehouse_series(settings: Settings) -> dict[str, Any]:
    from journey_pipeline.warehouse import warehouse

    empty = {"decisions_by_action": {}, "champion_by_day": {}, "control_events": []}
    if not settings.warehouse_path.exists():
        return empty
    with warehouse(settings.warehouse_path, read_only=True) as con:
        tables = {
            f"{schema}.{table}"
            for schema, table in con.execute(
                "SELECT table_schema, table_name FROM information_schema.tables"
            ).fetchall()
        }
        if "decide.decision_log" not in tables:
            return empty
        by_action: dict[str, dict[str, int]] = {}
        for day, action, n in con.execute(
            "SELECT decision_date, action, count(*) FROM decide.decision_log "
            "WHERE mode = 'live' GROUP BY ALL ORDER BY 1, 2"
        ).fetchall():
            by_action.setdefault(str(day), {})[action] = int(n)
        champion_by_day = {
            str(day): version or COLD_START
            for day, version in con.execute(
                "SELECT decision_date, mode(model_version) FROM decide.decision_log "
                "WHERE mode = 'live' GROUP BY 1 ORDER BY 1"
            ).fetchall()
        }
        control = [
            {
                "happened_at": str(at),
                "action": action,
                "version": version,
                "previous": previous,
                "who": who,
                "why": why,
            }
            for at, action, version, previous, who, why in (
                con.execute(
                    "SELECT happened_at, action, version, previous, who, why "
                    "FROM decide.control_events ORDER BY happened_at"
                ).fetchall()
                if "decide.control_events" in tables
                else []
            )
        ]
    return {
        "decisions_by_action": by_action,
        "champion_by_day": champion_by_day,
        "control_events": control,
    }


def _drift_series(settings: Settings) -> list[dict[str, Any]]:
    history = settings.reports_dir / "drift_history.parquet"
    if not history.exists():
        return []
    frame = pd.read_parquet(history)
    return [
        {
            "feature_date": str(row.current_window),
            "drift_share": _clean(row.drift_share),
            "skipped_reason": row.skipped_reason or None,
        }
        for row in frame.sort_values("current_window").itertuples(index=False)
    ]


def _materialization_metadata(instance: Any, asset: str, run_ids: set[str]) -> dict[str, dict]:
    import dagster as dg

    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset)), limit=10_000
    ).records
    out: dict[str, dict] = {}
    for record in records:
        entry = record.event_log_entry
        if entry.run_id in run_ids and entry.asset_materialization is not None:
            metadata = entry.asset_materialization.metadata
            out[entry.run_id] = {k: getattr(v, "value", v) for k, v in metadata.items()}
    return out


def _retrain_series(instance: Any) -> list[dict[str, Any]]:
    import dagster as dg

    records = instance.get_run_records(dg.RunsFilter(job_name=RETRAIN_JOB))
    run_ids = {r.dagster_run.run_id for r in records}
    models = _materialization_metadata(instance, "reward_model", run_ids)
    champions = _materialization_metadata(instance, "champion_model", run_ids)
    rows = []
    for record in sorted(records, key=lambda r: r.create_timestamp):
        run = record.dagster_run
        model = models.get(run.run_id, {})
        champion = champions.get(run.run_id, {}).get("champion_version")
        rows.append(
            {
                "run_id": run.run_id,
                "demo_day": run.tags.get(DEMO_DAY_TAG),
                "trigger": run.tags.get(TRIGGER_TAG, "manual"),
                "status": run.status.value,
                "challenger": _clean(model.get("challenger_version")),
                "champion": None if champion in (None, "none") else str(champion),
            }
        )
    return rows


def _regret_series(settings: Settings) -> tuple[dict[str, Any], Any]:
    """Expected (oracle) and realised views, or the reason they are not available."""
    from journey_pipeline.learn.regret import (
        ORACLE,
        POLICY,
        UNIFORM,
        OracleReplayError,
        load_regret_report,
        weekly_shares,
    )

    try:
        report = load_regret_report(settings)
    except (FileNotFoundError, ValueError, OracleReplayError) as error:
        return {"unavailable": f"{type(error).__name__}: {error}"}, None
    daily = report.daily
    cumulative = {
        name: {str(day): _clean(v) for day, v in daily[f"cum_{name}"].items()}
        for name in report.policies
    }
    totals = report.totals
    realised: dict[str, Any] = {"unavailable": "no matured outcomes yet"}
    if report.realised_daily is not None and report.realised is not None:
        realised = {
            "cumulative": {
                str(day): _clean(v) for day, v in report.realised_daily["cum_incremental"].items()
            },
            "totals": _clean(report.realised),
        }
    expected = {
        "decisions": int(totals["decisions"]),
        "holdout_decisions": int(totals["holdout_decisions"]),
        "incremental": _clean(totals["incremental"]),
        "share_of_oracle": _clean(totals["share_of_oracle"]),
        "best_static": report.best_static,
        "cumulative": cumulative,
        "policies": list(report.policies),
        "reference": {"policy": POLICY, "oracle": ORACLE, "uniform": UNIFORM},
        "weekly": weekly_shares(report),
    }
    return {"expected": expected, "realised": realised}, report


def margin_rows(regret: dict[str, Any]) -> list[dict[str, Any]]:
    """The policy's incremental margin against the oracle and the baselines, as table rows:
    policy, oracle, uniform random and the best static action (expected margins on the same
    decisions, from the simulator's ground truth) and the policy's realised margin against the
    holdout (matured outcomes). Empty when the run has no evaluable decision yet."""
    expected = regret.get("expected")
    if not expected:
        return []
    values, shares = expected["incremental"], expected["share_of_oracle"]
    best = expected["best_static"]
    rows = [
        {"policy": "policy (expected)", "incremental_margin": values["policy"]},
        {"policy": "oracle", "incremental_margin": values["oracle"]},
        {"policy": "uniform random", "incremental_margin": values["uniform"]},
        {
            "policy": f"best static ({best.removeprefix('static_')})",
            "incremental_margin": values[best],
        },
    ]
    for row, key in zip(rows, ("policy", "oracle", "uniform", best), strict=True):
        row["share_of_oracle"] = shares.get(key)
        row["decisions"] = expected["decisions"]
        row["basis"] = "expected, simulator oracle"
    realised = regret.get("realised", {}).get("totals")
    if realised and realised.get("policy_decisions"):
        rows.append(
            {
                "policy": "policy vs holdout (realised)",
                "incremental_margin": realised.get("incremental"),
                "share_of_oracle": None,
                "decisions": realised["policy_decisions"],
                "basis": (
                    f"matured outcomes; 95% CI {_money(realised.get('ci_low'))} .. "
                    f"{_money(realised.get('ci_high'))}; holdout n={realised['holdout_decisions']}"
                ),
            }
        )
    return _clean(rows)


def weekly_rows(weeks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The week-by-week shares of the oracle (:func:`journey_pipeline.learn.regret.weekly_shares`)
    as display rows: days, decisions, policy, best static, models."""
    return [
        {
            "days": f"{week['first_day']} .. {week['last_day']}",
            "decisions": week["decisions"],
            "policy": _share(week["share"]),
            "best static": _share(week["best_static_share"]),
            "models": ", ".join(week["models"]),
        }
        for week in weeks
    ]


def _calibration_png(settings: Settings) -> tuple[bytes | None, str | None]:
    """The champion's calibration plot from its MLflow run, and the version."""
    from journey_pipeline.decide import registry

    client = registry.configure_mlflow(settings)
    version = registry.alias_version(client, registry.CHAMPION)
    if version is None:
        return None, None
    run_id = client.get_model_version(registry.MODEL_NAME, version).run_id
    if not run_id:
        return None, version
    import mlflow

    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="calibration.png", tracking_uri=settings.mlflow_uri
        )
    except Exception:  # noqa: BLE001 - an absent artifact only leaves the plot out
        return None, version
    return Path(local).read_bytes(), version


def _latency_series(settings: Settings) -> dict[str, Any]:
    """The demo's one-at-a-time decision probes (``reports/decision_latency.parquet``, written
    by :func:`journey_pipeline.demo.measure_decision_latency`): every latency, p50 and p99."""
    path = settings.reports_dir / "decision_latency.parquet"
    if not path.exists():
        return {}
    frame = pd.read_parquet(path).sort_values("probe")
    if frame.empty:
        return {}
    ms = frame["ms"].to_numpy()
    return {
        "ms": [float(v) for v in ms],
        "probes": int(len(ms)),
        "p50_ms": float(pd.Series(ms).quantile(0.5)),
        "p99_ms": float(pd.Series(ms).quantile(0.99)),
        "model_versions": sorted({str(v) for v in frame["model_version"].fillna("cold start")}),
    }


def collect_report_data(settings: Settings, instance: Any) -> dict[str, Any]:
    """Every series the report shows, read from the run's stored results (see the module
    docstring), JSON-ready."""
    return _collect(settings, instance)[0]


def _collect(settings: Settings, instance: Any) -> tuple[dict[str, Any], Any]:
    regret, report = _regret_series(settings)
    scoreboard_path = settings.reports_dir / "scoreboard.parquet"
    scoreboard = (
        json.loads(pd.read_parquet(scoreboard_path).to_json(orient="records"))
        if scoreboard_path.exists()
        else []
    )
    data = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "home": str(settings.home),
        **_warehouse_series(settings),
        "drift": _drift_series(settings),
        "retrains": _retrain_series(instance),
        **regret,
        "scoreboard": scoreboard,
        "decision_latency": _latency_series(settings),
    }
    data["margins"] = margin_rows(regret)
    return _clean(data), report


# ------------------------------------------------------------------------------ plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    _pyplot().close(fig)
    return buffer.getvalue()


def _dates(keys) -> list[pd.Timestamp]:
    return [pd.Timestamp(k) for k in keys]


def _day_axis(ax, days: int) -> None:
    """One tick per day (every few days over long runs), labelled month-day."""
    import matplotlib.dates as mdates

    ax.xaxis.set_major_locator(mdates.DayLocator(interval=max(1, math.ceil(days / 12))))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d"))


def plot_realised(data: dict[str, Any]) -> bytes | None:
    realised = data.get("realised", {}).get("cumulative")
    if not realised:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    days = sorted(realised)
    values = [realised[d] if realised[d] is not None else float("nan") for d in days]
    ax.plot(_dates(days), values, marker="o", color="crimson", label="policy vs holdout")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_title("Realised cumulative incremental margin of the policy against the holdout")
    ax.set_xlabel("decision date")
    ax.set_ylabel("USD")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    _day_axis(ax, len(days))
    fig.autofmt_xdate()
    return _png(fig)


def plot_latency(data: dict[str, Any]) -> bytes | None:
    latency = data.get("decision_latency") or {}
    if not latency.get("ms"):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.hist(latency["ms"], bins=40, color="#4c72b0")
    for name, style in (("p50_ms", "--"), ("p99_ms", ":")):
        ax.axvline(
            latency[name],
            color="black",
            linestyle=style,
            label=f"{name[:3]} {latency[name]:.2f} ms",
        )
    ax.set_title(f"One decision through the real-time path ({latency['probes']} probes)")
    ax.set_xlabel("milliseconds (feature read + policy + explanation)")
    ax.set_ylabel("decisions")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_decisions(data: dict[str, Any]) -> bytes | None:
    by_day = data.get("decisions_by_action") or {}
    if not by_day:
        return None
    plt = _pyplot()
    frame = pd.DataFrame(by_day).T.fillna(0).sort_index()
    fig, ax = plt.subplots(figsize=(9, 4))
    bottom = None
    for action in frame.columns:
        ax.bar(frame.index, frame[action], bottom=bottom, label=action)
        bottom = frame[action] if bottom is None else bottom + frame[action]
    ax.set_title("Live decisions by action per day")
    ax.set_xlabel("decision date")
    ax.set_ylabel("decisions")
    ax.legend(fontsize=8, ncols=3)
    ax.tick_params(axis="x", labelrotation=45)
    return _png(fig)


def plot_drift(data: dict[str, Any]) -> bytes | None:
    from journey_pipeline.learn.analysis import DRIFT_SHARE_THRESHOLD

    drift, champion = data.get("drift") or [], data.get("champion_by_day") or {}
    if not drift and not champion:
        return None
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    measured = [d for d in drift if d["drift_share"] is not None]
    top.plot(
        _dates(d["feature_date"] for d in measured),
        [d["drift_share"] for d in measured],
        marker="o",
        label="drift share (Evidently)",
    )
    top.axhline(DRIFT_SHARE_THRESHOLD, color="red", linestyle="--", label="retrain threshold")
    for k, retrain in enumerate(r for r in data.get("retrains", []) if r["demo_day"]):
        when = pd.Timestamp(retrain["demo_day"]) + timedelta(days=1)
        label = f"retrain ({retrain['trigger']})" if k == 0 else None
        top.axvline(when, color="grey", linestyle=":", label=label)
        top.annotate(
            retrain["trigger"],
            (when, 0.98),
            xycoords=("data", "axes fraction"),
            fontsize=7,
            rotation=90,
            va="top",
        )
    if not measured and drift:
        top.text(
            0.5,
            0.5,
            f"no drift share yet: {drift[-1]['skipped_reason']}",
            transform=top.transAxes,
            ha="center",
            fontsize=8,
            wrap=True,
        )
    top.set_ylim(0, 1.05)
    top.set_ylabel("share of drifted features")
    top.set_title("Feature drift per day (newest feature day), retrains marked")
    top.grid(alpha=0.3)
    top.legend(fontsize=8, loc="upper left")
    days = sorted(champion)
    labels = [champion[d] for d in days]
    order = sorted(set(labels), key=lambda v: (v != COLD_START, int(v) if v.isdigit() else 0))
    bottom.step(_dates(days), [order.index(v) for v in labels], where="post", marker="o")
    bottom.set_yticks(range(len(order)), [v if v == COLD_START else f"v{v}" for v in order])
    bottom.set_ylabel("model deciding live")
    bottom.set_xlabel("date")
    bottom.grid(alpha=0.3)
    span = {d["feature_date"] for d in drift} | set(champion)
    _day_axis(bottom, len(span))
    fig.autofmt_xdate()
    return _png(fig)


def _file_png(path: Path) -> bytes:
    return Path(path).read_bytes()


# ------------------------------------------------------------------------------ HTML
def _money(value: Any) -> str:
    return "n/a" if value is None else f"{value:,.2f}"


def _share(value: Any) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(row.get(c)))}</td>" for c in columns) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _figure(png: bytes | None, alt: str, missing: str) -> str:
    if png is None:
        return f"<p class='missing'>{html.escape(missing)}</p>"
    encoded = base64.b64encode(png).decode("ascii")
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{encoded}'>"


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
img { max-width: 100%; } p.note { color: #555; } p.missing { color: #a00; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
"""


def render_html(data: dict[str, Any], images: dict[str, bytes | None]) -> str:
    """The page, from :func:`collect_report_data`'s ``data`` and the plots' PNG bytes."""
    regret_missing = data.get("unavailable", "no evaluable decision yet")
    margins = [
        {
            **row,
            "incremental_margin": _money(row["incremental_margin"]),
            "share_of_oracle": _share(row["share_of_oracle"]),
        }
        for row in data.get("margins", [])
    ]
    retrains = data.get("retrains", [])
    weeks = weekly_rows((data.get("expected") or {}).get("weekly", []))
    missing = f"<p class='missing'>{html.escape(regret_missing)}</p>"
    # "</" would end the script element early; JSON reads "<\/" back as "</".
    embedded = json.dumps(data, sort_keys=True).replace("</", "<\\/")
    total_decisions = sum(sum(v.values()) for v in data.get("decisions_by_action", {}).values())
    sections = [
        f"<h1>journey demo report</h1><p class='note'>State in <code>{html.escape(data['home'])}"
        f"</code>; generated {html.escape(data['generated_at'])}. {total_decisions:,} live "
        f"decisions over {len(data.get('decisions_by_action', {}))} days, {len(retrains)} "
        f"retrain run{'' if len(retrains) == 1 else 's'}. Every figure below is read from this run's warehouse, reports, Dagster "
        "runs and MLflow registry.</p>",
        "<h2>The policy against the oracle and the baselines</h2>",
        "<p class='note'>Incremental margin against <code>no_offer</code>. Expected values use "
        "the simulator's ground truth for the very decisions the policy took (the persistent "
        "holdout left out): the oracle takes the best action for each contact, uniform random "
        "the mean over actions, a static policy one action for everybody. The realised row is "
        "what a real deployment can measure: matured rewards of the policy's decisions against "
        "the holdout's.</p>",
        _table(margins, ["policy", "incremental_margin", "share_of_oracle", "decisions", "basis"])
        if margins
        else missing,
        "<h2>Week by week</h2>",
        "<p class='note'>The policy's share of the oracle's incremental margin per 7 days of "
        "applied decisions, beside the best static action's on the same decisions, and the "
        "model versions that took them: how the loop fares after a drift and after each "
        "retrain.</p>",
        _table(weeks, ["days", "decisions", "policy", "best static", "models"])
        if weeks
        else missing,
        "<h2>Realised incremental margin against the holdout</h2>",
        "<p class='note'>Cumulative over decision dates: the policy's matured rewards minus "
        "as many times the holdout's mean reward (pooled up to that day). Outcomes mature "
        "after the attribution window, so the newest days count only once they have.</p>",
        _figure(images.get("realised"), "realised margin", "no matured outcomes yet"),
        "<h2>Policy, oracle and baselines over time</h2>",
        "<p class='note'>Cumulative expected incremental margin by the day each decision was "
        "applied, for the policy, the oracle, uniform random and each static action (dotted); "
        "the realised line is the one above. Below: cumulative regret against the oracle and "
        "the policy's share of the oracle's margin.</p>",
        _figure(images.get("cumulative"), "cumulative margin", regret_missing),
        _figure(images.get("regret"), "regret", regret_missing),
        "<h2>Decisions by action</h2>",
        "<p class='note'>Live decisions per day, by action (the holdout always gets "
        "<code>no_offer</code>). Under cold start the policy explores uniformly; once a "
        "champion is promoted the mix follows its reward models.</p>",
        _figure(images.get("decisions"), "decisions by action", "no decisions yet"),
        "<h2>Drift, retrains and the champion</h2>",
        "<p class='note'>Top: Evidently's share of drifted features between the champion's "
        "training window and the newest feature day (no value while no reference window "
        "exists), the threshold at which the drift sensor launches a retrain, and the retrain "
        "runs, at the feature day their analysis saw. Bottom: the model version that took "
        "each day's live decisions.</p>",
        _figure(images.get("drift"), "drift and champion", "no drift report yet"),
        _table(retrains, ["demo_day", "trigger", "status", "challenger", "champion", "run_id"])
        if retrains
        else "<p class='note'>No retrain ran.</p>",
    ]
    if data.get("control_events"):
        sections += [
            "<p class='note'>Champion changes and autonomy switches, with who and why:</p>",
            _table(
                data["control_events"],
                ["happened_at", "action", "version", "previous", "who", "why"],
            ),
        ]
    sections += [
        "<h2>Calibration of the champion's reward model</h2>",
        "<p class='note'>Predicted against observed conversion on the champion's validation "
        "window, from its MLflow run.</p>",
        _figure(
            images.get("calibration"),
            "calibration",
            "no champion yet (cold start): nothing to calibrate",
        ),
        "<h2>Decision latency</h2>",
        "<p class='note'>After the last day, one contact at a time through the path of "
        "<code>journey serve</code> (online feature read, the served policy, the explanation), "
        "for contacts the run decided for; nothing is logged or sent. The batch path decides "
        "a day's contacts together and is faster per decision.</p>",
        _figure(images.get("latency"), "decision latency", "no decision to probe yet"),
        "<h2>Scoreboard</h2>",
        "<p class='note'>North-star metrics and SLOs as the scoreboard asset last measured "
        "them.</p>",
        _table(data.get("scoreboard", []), ["metric", "value", "unit", "target", "status", "note"])
        if data.get("scoreboard")
        else "<p class='missing'>no scoreboard yet</p>",
        f"<script type='application/json' id='{DATA_ELEMENT_ID}'>{embedded}</script>",
    ]
    body = "\n".join(sections)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>journey demo report</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )


def read_report_data(path: str | Path) -> dict[str, Any]:
    """The JSON block embedded in a report written by :func:`write_demo_report`."""
    text = Path(path).read_text(encoding="utf-8")
    marker = f"id='{DATA_ELEMENT_ID}'>"
    start = text.index(marker) + len(marker)
    end = text.index("</script>", start)
    return json.loads(text[start:end])


def write_demo_report(settings: Settings, instance: Any) -> tuple[Path, dict[str, Any]]:
    """Collect the run's stored results, plot them and write ``reports/demo.html``.
    Out: the path and the embedded data."""
    from journey_pipeline.learn.regret import plot_cumulative, plot_regret

    settings.reports_dir.mkdir(parents=True, exist_ok=True)
    data, report = _collect(settings, instance)
    images: dict[str, bytes | None] = {
        "realised": plot_realised(data),
        "decisions": plot_decisions(data),
        "drift": plot_drift(data),
        "latency": plot_latency(data),
    }
    if report is not None:
        images["cumulative"] = _file_png(
            plot_cumulative(report, settings.reports_dir / "demo_cumulative_margin.png")
        )
        images["regret"] = _file_png(plot_regret(report, settings.reports_dir / "demo_regret.png"))
    images["calibration"], _ = _calibration_png(settings)
    path = settings.reports_dir / REPORT_NAME
    path.write_text(render_html(data, images), encoding="utf-8")
    return path, data
