"""Feature and prediction drift between a reference window and the latest window (Evidently).

Uses Evidently's current API (``Report`` + ``DataDriftPreset`` over ``Dataset``s). Evidently
picks a test per column from its type and the sample size (Kolmogorov-Smirnov or chi-squared /
Z-test p-values on small samples, Wasserstein or Jensen-Shannon distances on large ones); a
column drifts when its p-value is below the threshold, or its distance at or above it. The
drift of predictions is the drift of one more column: the model's expected reward of the
chosen action.

Nothing here raises on a thin window: too few rows, or no usable column, yields a
:class:`DriftResult` with ``skipped_reason`` set, which callers report instead of failing.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset

DEFAULT_MIN_ROWS = 30  # per window; below this the statistical tests say little


@dataclass(frozen=True)
class DriftResult:
    """Outcome of :func:`drift_report`.

    ``drift_share``: drifted / evaluated columns (None when skipped). ``per_column``: the
    score of each evaluated column (p-value or distance, see ``methods``), ``thresholds`` the
    threshold each was compared with, ``drifted_columns`` those that drifted.
    ``skipped_columns`` maps columns left out to why (e.g. all null in a window).
    ``prediction_drift``: the score of ``prediction_column``, if one was given.
    """

    drift_share: float | None
    per_column: dict[str, float]
    drifted_columns: list[str]
    html_path: Path | None
    methods: dict[str, str] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    skipped_columns: dict[str, str] = field(default_factory=dict)
    skipped_reason: str | None = None
    n_reference: int = 0
    n_current: int = 0
    prediction_column: str | None = None
    prediction_drift: float | None = None

    @property
    def skipped(self) -> bool:
        """True when no drift analysis was run."""
        return self.skipped_reason is not None

    @property
    def prediction_drifted(self) -> bool | None:
        """Whether the prediction column drifted (None without one or when skipped)."""
        if self.prediction_column is None or self.prediction_column not in self.per_column:
            return None
        return self.prediction_column in self.drifted_columns

    def as_metadata(self) -> dict[str, object]:
        """Flat figures for materialisation metadata."""
        return {
            "drift_share": self.drift_share,
            "drifted_columns": ", ".join(self.drifted_columns),
            "n_reference": self.n_reference,
            "n_current": self.n_current,
            "skipped_reason": self.skipped_reason or "",
            "prediction_drift": self.prediction_drift,
            "html_path": str(self.html_path) if self.html_path else "",
        }

    def scores_markdown(self) -> str:
        """Per-column scores as a Markdown table."""
        table = pd.DataFrame(
            {
                "column": list(self.per_column),
                "method": [self.methods.get(c, "") for c in self.per_column],
                "score": list(self.per_column.values()),
                "threshold": [self.thresholds.get(c) for c in self.per_column],
                "drifted": [c in self.drifted_columns for c in self.per_column],
            }
        )
        return table.to_markdown(index=False, floatfmt=".4g")


def _is_drift(method: str, score: float, threshold: float) -> bool:
    # Evidently reports p-values for hypothesis tests and distances otherwise.
    if "p_value" in method:
        return score < threshold
    return score >= threshold


def _skipped(
    reason: str,
    n_reference: int,
    n_current: int,
    prediction_column: str | None,
    skipped_columns: dict[str, str] | None = None,
) -> DriftResult:
    return DriftResult(
        drift_share=None,
        per_column={},
        drifted_columns=[],
        html_path=None,
        skipped_columns=skipped_columns or {},
        skipped_reason=reason,
        n_reference=n_reference,
        n_current=n_current,
        prediction_column=prediction_column,
    )


def drift_report(
    reference_df: pd.DataFrame,
    current_df: pd.DataFrame,
    columns: Sequence[str],
    out_html: str | Path | None,
    *,
    prediction_column: str | None = None,
    min_rows: int = DEFAULT_MIN_ROWS,
) -> DriftResult:
    """Compare ``current_df`` with ``reference_df`` column by column with Evidently.

    Inputs: the two windows (one row per contact-day or decision), the feature ``columns``
    to compare, ``out_html`` where the Evidently HTML report is written (None: not saved), an
    optional ``prediction_column`` (e.g. ``expected_reward`` of the chosen action) compared as
    one more column, and ``min_rows`` per window. Numeric columns are tested as numerical, the
    rest as categorical; columns missing from a window or entirely null in one are skipped and
    listed. Returns a :class:`DriftResult`; an empty or too small window gives one with
    ``skipped_reason`` instead of an exception.
    """
    wanted = list(dict.fromkeys([*columns, *([prediction_column] if prediction_column else [])]))
    n_ref, n_cur = len(reference_df), len(current_df)
    if n_ref < min_rows or n_cur < min_rows:
        return _skipped(
            f"too few rows to test drift: reference {n_ref}, current {n_cur}, need {min_rows} "
            "in each window",
            n_ref,
            n_cur,
            prediction_column,
        )
    skipped_columns: dict[str, str] = {}
    usable: list[str] = []
    for column in wanted:
        if column not in reference_df.columns or column not in current_df.columns:
            skipped_columns[column] = "missing from a window"
        elif reference_df[column].isna().all() or current_df[column].isna().all():
            skipped_columns[column] = "all values null in a window"
        else:
            usable.append(column)
    if not usable:
        return _skipped(
            "no column has values in both windows", n_ref, n_cur, prediction_column, skipped_columns
        )

    numerical = [
        c
        for c in usable
        if pd.api.types.is_numeric_dtype(reference_df[c])
        and pd.api.types.is_numeric_dtype(current_df[c])
        and not pd.api.types.is_bool_dtype(reference_df[c])
    ]
    categorical = [c for c in usable if c not in numerical]
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)

    def as_dataset(frame: pd.DataFrame) -> Dataset:
        data = frame[usable].copy()
        for c in categorical:
            data[c] = data[c].astype("string").astype(object)
        return Dataset.from_pandas(data, data_definition=definition)

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # Constant columns make some statistics divide by zero; the test result is still right.
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = Report([DataDriftPreset(columns=usable)]).run(
            as_dataset(current_df), as_dataset(reference_df)
        )
    per_column: dict[str, float] = {}
    methods: dict[str, str] = {}
    thresholds: dict[str, float] = {}
    share: float | None = None
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        kind = config.get("type", "")
        if kind.endswith("ValueDrift"):
            column = config["column"]
            per_column[column] = float(metric["value"])
            methods[column] = str(config["method"])
            thresholds[column] = float(config["threshold"])
        elif kind.endswith("DriftedColumnsCount"):
            share = float(metric["value"]["share"])
    drifted = [c for c in per_column if _is_drift(methods[c], per_column[c], thresholds[c])]
    if share is None:
        share = len(drifted) / len(per_column) if per_column else 0.0

    html_path: Path | None = None
    if out_html is not None:
        html_path = Path(out_html)
        html_path.parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(html_path))
    return DriftResult(
        drift_share=share,
        per_column=per_column,
        drifted_columns=drifted,
        html_path=html_path,
        methods=methods,
        thresholds=thresholds,
        skipped_columns=skipped_columns,
        n_reference=n_ref,
        n_current=n_cur,
        prediction_column=prediction_column,
        prediction_drift=per_column.get(prediction_column) if prediction_column else None,
    )


def chosen_action_expected_reward(expected_rewards: pd.Series, actions: pd.Series) -> pd.Series:
    """Expected reward of the chosen action per decision, the prediction whose drift is tracked.

    Inputs: ``expected_rewards`` (JSON text or dicts ``{action: expected margin}``, as in
    ``decide.decision_log``) and ``actions`` (the chosen action), aligned. Output: a float
    Series, NaN where the JSON lacks the action.
    """

    def pick(blob: object, action: object) -> float:
        mapping = json.loads(blob) if isinstance(blob, str | bytes) else blob
        if not isinstance(mapping, dict) or action not in mapping or mapping[action] is None:
            return float("nan")
        return float(mapping[action])

    values = [pick(b, a) for b, a in zip(expected_rewards, actions, strict=True)]
    return pd.Series(values, index=expected_rewards.index, dtype=float)
