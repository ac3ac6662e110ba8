"""MLflow tracking and the model registry for the next-best-action policy.

Every training is an MLflow run (params, metrics, the feature-importance and calibration
plots, the model card, and the bandit as an ``mlflow.pyfunc`` model with signature and input
example) registered as a new version of ``journey-next-best-action`` with the alias
``challenger``. Only :func:`promote` moves ``champion``, after :func:`gate` passed; the history
of champion moves (who, why, when) is kept as a registered-model tag, so :func:`rollback` can
put the previous champion back. Aliases only, never stages.
"""

from __future__ import annotations

import json
import math
import pickle
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from journey_pipeline.decide.bandit import ContextualBandit
from journey_pipeline.decide.reward_model import TrainingResult
from journey_pipeline.settings import Settings, load_settings

MODEL_NAME = "journey-next-best-action"
EXPERIMENT_NAME = "journey-next-best-action"
CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion_history"
HISTORY_KEEP = 50  # newest entries kept in the tag; tag values have a size limit

REQUIRED_METRICS = ("auc", "log_loss", "ece", "ope_value", "ope_ci_low", "ope_ci_high")


# ------------------------------------------------------------------- plumbing
def configure_mlflow(settings: Settings | None = None) -> MlflowClient:
    """Point MLflow at the settings' tracking URI and return a client for it.

    The experiment is created on first use with its artifacts under
    ``settings.mlflow_artifacts_dir``.
    """
    settings = settings or load_settings()
    uri = settings.mlflow_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    if client.get_experiment_by_name(EXPERIMENT_NAME) is None:
        settings.mlflow_artifacts_dir.mkdir(parents=True, exist_ok=True)
        try:
            client.create_experiment(
                EXPERIMENT_NAME, artifact_location=settings.mlflow_artifacts_dir.resolve().as_uri()
            )
        except MlflowException:
            # Another process created it between the lookup and here.
            if client.get_experiment_by_name(EXPERIMENT_NAME) is None:
                raise
    return client


class BanditPolicyModel(mlflow.pyfunc.PythonModel):
    """The trained :class:`ContextualBandit` as an MLflow pyfunc: features in, ``action`` and
    ``propensity`` out (one exploration draw per row)."""

    def load_context(self, context: Any) -> None:
        with open(context.artifacts["bandit"], "rb") as handle:
            self.bandit: ContextualBandit = pickle.load(handle)

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        return self.bandit.decide(model_input)


@dataclass(frozen=True)
class RegisteredRun:
    """A logged training: MLflow run id and the registered model version."""

    run_id: str
    version: str


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    # Explicit requirements: inferring them would import-trace the model in a subprocess.
    return [f"{name}=={version(name)}" for name in ("lightgbm", "numpy", "pandas", "mlflow")]


def log_training_run(
    result: TrainingResult,
    settings: Settings | None = None,
    *,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> RegisteredRun:
    """Log a training as an MLflow run and register its policy as a new ``challenger``.

    In: a :class:`TrainingResult`. Out: :class:`RegisteredRun` (run id, model version).
    """
    client = configure_mlflow(settings)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    with (
        tempfile.TemporaryDirectory() as scratch,
        mlflow.start_run(
            experiment_id=experiment.experiment_id, run_name=run_name, tags=dict(tags or {})
        ) as run,
    ):
        work = Path(scratch)
        mlflow.log_params({k: str(v)[:500] for k, v in result.params().items()})
        mlflow.log_metrics(
            {k: float(v) for k, v in result.metrics.items() if v is not None and math.isfinite(v)}
        )
        per_action = {
            f"{metric}_{action}": float(value)
            for action, row in result.per_action_metrics.iterrows()
            for metric, value in row.items()
            if pd.notna(value) and math.isfinite(float(value))
        }
        mlflow.log_metrics(per_action)
        mlflow.log_artifact(str(result.plot_feature_importance(work / "feature_importance.png")))
        mlflow.log_artifact(str(result.plot_calibration(work / "calibration.png")))
        card = work / "model_card.md"
        card.write_text(result.model_card(), encoding="utf-8")
        mlflow.log_artifact(str(card))
        bandit_path = work / "bandit.pkl"
        with open(bandit_path, "wb") as handle:
            pickle.dump(result.bandit, handle, protocol=pickle.HIGHEST_PROTOCOL)
        example = result.input_example
        signature = mlflow.models.infer_signature(example, result.bandit.decide(example))
        info = mlflow.pyfunc.log_model(
            name="policy",
            python_model=BanditPolicyModel(),
            artifacts={"bandit": str(bandit_path)},
            signature=signature,
            input_example=example,
            registered_model_name=MODEL_NAME,
            pip_requirements=_pip_requirements(),
        )
        run_id = run.info.run_id
    version = str(info.registered_model_version)
    client.set_registered_model_alias(MODEL_NAME, CHALLENGER, version)
    client.set_model_version_tag(MODEL_NAME, version, "run_id", run_id)
    client.set_registered_model_tag(
        MODEL_NAME, "description", "Next-best-action contextual bandit (journey-pipeline)."
    )
    return RegisteredRun(run_id=run_id, version=version)


# ----------------------------------------------------------------------- gate
@dataclass(frozen=True)
class GateThresholds:
    """Thresholds of the promotion gate."""

    min_auc_margin: float = 0.02  # AUC must exceed 0.5 by this much
    max_ece: float = 0.10
    min_validation_rows: int = 50
    max_auc_drop: float = 0.01  # versus the champion
    max_log_loss_increase: float = 0.01  # versus the champion
    ope_tolerance: float = 0.0  # challenger's OPE lower bound may trail the champion's by this
    # Paired comparison (both valued on the challenger's validation window): the challenger's
    # estimated uplift over the champion must be positive, and the lower bound of its 95%
    # interval no further below zero than this share of the champion's value.
    max_ope_regression_share: float = 0.1


@dataclass
class GateResult:
    """Outcome of the gate: ``passed``, the ``reasons`` for failing, and every check as a row
    of ``table`` (check, challenger, reference, passed)."""

    passed: bool
    reasons: list[str]
    table: list[dict[str, Any]] = field(default_factory=list)

    def markdown(self) -> str:
        """The checks as a Markdown table."""
        lines = ["| check | challenger | reference | passed |", "|---|---|---|---|"]
        for row in self.table:
            lines.append(
                f"| {row['check']} | {_fmt(row['challenger'])} | {_fmt(row['reference'])} | "
                f"{'yes' if row['passed'] else 'NO'} |"
            )
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def version_metrics(version: str | int, settings: Settings | None = None) -> dict[str, float]:
    """Metrics of the training run behind a registered model version."""
    client = configure_mlflow(settings)
    model_version = client.get_model_version(MODEL_NAME, str(version))
    return dict(client.get_run(model_version.run_id).data.metrics)


def _validation_window(
    candidate: Mapping[str, float] | str | int | None, settings: Settings | None
) -> tuple[str, str] | None:
    """(first, last) validation decision time of a registered version's training run; None
    for metrics given as a mapping (their window is unknown) or a run without them."""
    if candidate is None or isinstance(candidate, Mapping):
        return None
    client = configure_mlflow(settings)
    model_version = client.get_model_version(MODEL_NAME, str(candidate))
    params = client.get_run(model_version.run_id).data.params
    start, end = params.get("data_valid_start"), params.get("data_valid_end")
    return (start, end) if start and end else None


def trained_until(version: str | int | None, settings: Settings | None = None) -> str | None:
    """The newest decision a registered version learnt from: the end of its training run's
    data window (the deployed bandit is refitted on every decision of it); None when unknown."""
    if version is None:
        return None
    window = _validation_window(str(version), settings)
    return window[1] if window else None


def _metrics_of(
    candidate: Mapping[str, float] | str | int | None, settings: Settings | None
) -> dict[str, float] | None:
    if candidate is None:
        return None
    if isinstance(candidate, Mapping):
        return {k: float(v) for k, v in candidate.items()}
    return version_metrics(candidate, settings)


def gate(
    challenger: Mapping[str, float] | str | int,
    champion: Mapping[str, float] | str | int | None = None,
    *,
    thresholds: GateThresholds | None = None,
    settings: Settings | None = None,
) -> GateResult:
    """Decide whether ``challenger`` may become champion.

    In: challenger and champion as metric dicts or registered version numbers (champion None
    for the first version). Without a champion: absolute sanity checks (finite metrics, AUC
    above chance by a margin, calibration, enough validation rows, OPE interval not entirely
    below the logging policy). With one: additionally no material AUC or log-loss regression,
    and a positive off-policy uplift over the champion, both valued on the same validation
    decisions, whose paired 95% interval does not reach more than
    ``max_ope_regression_share`` of the champion's value below zero. (Versions trained
    without the paired estimate: the challenger's OPE lower bound at least the champion's.)

    AUC and log loss are properties of a window as much as of a model (log loss moves with
    the conversion rate of the days it is measured on), so they are compared with the
    champion's only when both were measured on the same validation window. For registered
    versions validated on different windows (every retrain on newer data) those two rows are
    shown for information and do not block; the champion comparison then rests on the OPE
    check, which values the champion on the challenger's window.
    Out: :class:`GateResult`.
    """
    t = thresholds or GateThresholds()
    mine = _metrics_of(challenger, settings) or {}
    theirs = _metrics_of(champion, settings)
    table: list[dict[str, Any]] = []

    def check(name: str, value: Any, reference: Any, ok: bool) -> None:
        table.append({"check": name, "challenger": value, "reference": reference, "passed": ok})

    def finite(name: str, metrics: Mapping[str, float]) -> bool:
        value = metrics.get(name)
        return value is not None and math.isfinite(value)

    for name in REQUIRED_METRICS:
        check(f"{name} is finite", mine.get(name, math.nan), "finite", finite(name, mine))
    nan = math.nan
    auc, ece = mine.get("auc", nan), mine.get("ece", nan)
    check("auc above chance", auc, 0.5 + t.min_auc_margin, auc > 0.5 + t.min_auc_margin)
    check("calibration (ece)", ece, t.max_ece, ece <= t.max_ece)
    if mine.get("regime_only") == 0.0:
        # A drift was detected and too few of its decisions had matured to learn from them
        # alone: the model knows the old customers, and its comparison with the champion
        # rests on them too.
        check("learnt from the regime since the drift", 0.0, 1.0, False)
    n_valid = mine.get("n_valid", 0.0)
    check("validation rows", n_valid, t.min_validation_rows, n_valid >= t.min_validation_rows)
    if "logged_policy_value" in mine:
        logged = mine["logged_policy_value"]
        high = mine.get("ope_ci_high", nan)
        check("ope not below logging policy", high, logged, high >= logged)

    if theirs is not None:
        my_window = _validation_window(challenger, settings)
        their_window = _validation_window(champion, settings)
        comparable = my_window is None or their_window is None or my_window == their_window
        suffix = "" if comparable else " (other window: information only)"
        their_auc = theirs.get("auc", nan)
        check(
            f"auc vs champion{suffix}",
            auc,
            their_auc - t.max_auc_drop,
            not comparable or not math.isfinite(their_auc) or auc >= their_auc - t.max_auc_drop,
        )
        loss, their_loss = mine.get("log_loss", nan), theirs.get("log_loss", nan)
        check(
            f"log loss vs champion{suffix}",
            loss,
            their_loss + t.max_log_loss_increase,
            not comparable
            or not math.isfinite(their_loss)
            or loss <= their_loss + t.max_log_loss_increase,
        )
        uplift, uplift_low = mine.get("ope_uplift_vs_champion"), mine.get("ope_uplift_ci_low")
        if "champion_comparison_rows" in mine:
            # Compared on the decisions the champion did not learn from (see
            # reward_model.train_reward_models): too few, and there is no fair comparison yet.
            n = mine["champion_comparison_rows"]
            check(
                "decisions the champion did not learn from",
                n,
                t.min_validation_rows,
                n >= t.min_validation_rows,
            )
        if uplift is not None and uplift_low is not None and math.isfinite(uplift_low):
            # The paired difference on the same decisions: the fair comparison (see
            # reward_model.snips_difference).
            allowed = -t.max_ope_regression_share * abs(mine.get("champion_ope_value", nan))
            allowed = allowed if math.isfinite(allowed) else 0.0
            check("ope uplift vs champion (paired)", uplift, 0.0, uplift > 0.0)
            check("ope uplift lower bound", uplift_low, allowed, uplift_low >= allowed)
        elif "champion_comparison_rows" not in mine:
            # Versions trained before the paired estimate: compare the two intervals' lower
            # bounds, with the champion valued on the same window when that was measured.
            reference_low = mine.get("champion_ope_ci_low", theirs.get("ope_ci_low", nan))
            low = mine.get("ope_ci_low", nan)
            check(
                "ope lower bound vs champion",
                low,
                reference_low - t.ope_tolerance,
                not math.isfinite(reference_low) or low >= reference_low - t.ope_tolerance,
            )
    reasons = [
        f"{row['check']}: challenger {_fmt(row['challenger'])}, needs {_fmt(row['reference'])}"
        for row in table
        if not row["passed"]
    ]
    return GateResult(passed=not reasons, reasons=reasons, table=table)


# ------------------------------------------------------------ champion moves
@dataclass(frozen=True)
class ChampionChange:
    """A champion alias move: what it was, what it is now, who did it, why and when."""

    action: str  # 'promote' or 'rollback'
    version: str
    previous: str | None
    who: str
    why: str
    at: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def alias_version(client: MlflowClient, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(MODEL_NAME, alias).version)
    except MlflowException:
        return None


def champion_history(settings: Settings | None = None) -> list[dict[str, Any]]:
    """Champion moves, oldest first (the newest ``HISTORY_KEEP``)."""
    client = configure_mlflow(settings)
    try:
        model = client.get_registered_model(MODEL_NAME)
    except MlflowException:
        return []
    return json.loads(model.tags.get(HISTORY_TAG, "[]"))


def _record(client: MlflowClient, change: ChampionChange, settings: Settings | None) -> None:
    history = [*champion_history(settings), change.as_dict()][-HISTORY_KEEP:]
    client.set_registered_model_tag(MODEL_NAME, HISTORY_TAG, json.dumps(history))
    prefix = "promoted" if change.action == "promote" else "restored"
    for key, value in (("by", change.who), ("why", change.why), ("at", change.at)):
        client.set_model_version_tag(MODEL_NAME, change.version, f"{prefix}_{key}", value)


def promote(
    version: str | int, who: str, why: str, settings: Settings | None = None
) -> ChampionChange:
    """Make ``version`` the champion; records who, why and when. Out: the change."""
    if not who or not why:
        raise ValueError("a promotion needs who made it and why")
    client = configure_mlflow(settings)
    version = str(client.get_model_version(MODEL_NAME, str(version)).version)
    previous = alias_version(client, CHAMPION)
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, version)
    change = ChampionChange(
        "promote", version, previous, who, why, datetime.now(UTC).isoformat(timespec="seconds")
    )
    _record(client, change, settings)
    return change


def rollback(who: str, why: str, settings: Settings | None = None) -> ChampionChange:
    """Put back the champion that the current one replaced (the promotion's ``previous``).

    Repeated rollbacks walk further back through the promotions. ValueError when there is no
    earlier champion to return to.
    """
    if not who or not why:
        raise ValueError("a rollback needs who made it and why")
    client = configure_mlflow(settings)
    current = alias_version(client, CHAMPION)
    if current is None:
        raise ValueError(f"{MODEL_NAME} has no champion to roll back")
    promotions = [h for h in champion_history(settings) if h["action"] == "promote"]
    previous = next((h["previous"] for h in reversed(promotions) if h["version"] == current), None)
    if previous is None:
        raise ValueError(f"champion version {current} has no previous champion to return to")
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, previous)
    change = ChampionChange(
        "rollback", previous, current, who, why, datetime.now(UTC).isoformat(timespec="seconds")
    )
    _record(client, change, settings)
    return change


def champion_training_end(settings: Settings | None = None):
    """Date of the newest decision the current champion was trained on (its run's
    ``data_valid_end``), or None without a champion."""
    client = configure_mlflow(settings)
    version = alias_version(client, CHAMPION)
    if version is None:
        return None
    run_id = client.get_model_version(MODEL_NAME, version).run_id
    end = client.get_run(run_id).data.params.get("data_valid_end") if run_id else None
    return pd.Timestamp(end).date() if end and end != "None" else None


def run_url(run_id: str, settings: Settings | None = None) -> str:
    """Link to a run in the MLflow UI (``mlflow ui`` on its default port unless
    ``JOURNEY_MLFLOW_UI_URL`` says otherwise)."""
    import os

    client = configure_mlflow(settings)
    experiment_id = client.get_run(run_id).info.experiment_id
    base = os.environ.get("JOURNEY_MLFLOW_UI_URL", "http://127.0.0.1:5000").rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


# -------------------------------------------------------------------- loading
_cache: dict[tuple[str, str], ContextualBandit] = {}
_cache_lock = threading.Lock()


def load_policy_model(
    alias: str = CHAMPION, settings: Settings | None = None
) -> tuple[ContextualBandit | None, str | None]:
    """The bandit behind ``alias`` and its version, or ``(None, None)`` when the alias is not
    set (cold start). Loaded models are cached by (tracking URI, version), so polling for an
    alias move costs one registry lookup."""
    settings = settings or load_settings()
    client = configure_mlflow(settings)
    version = alias_version(client, alias)
    if version is None:
        return None, None
    key = (settings.mlflow_uri, version)
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached, version
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{version}")
    bandit = model.unwrap_python_model().bandit
    with _cache_lock:
        _cache[key] = bandit
    return bandit, version
