"""Smoke run of the OPE benchmark: it runs, measures its baseline and reports ratios."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_ope.py"


def test_quick_benchmark_reports_estimators_against_the_naive_baseline(capsys):
    spec = importlib.util.spec_from_file_location("bench_ope", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.main(["--quick", "--reps", "20"])
    world = report["worlds"]["min_propensity=0.05"]
    assert world["naive"]["rmse_ratio_vs_naive"] == 1.0
    # The logged mean estimates the logging policy, not the target: every weighted
    # estimator with normalisation or a reward model beats it.
    assert world["snips"]["rmse_ratio_vs_naive"] > 1.0
    assert world["dr"]["rmse_ratio_vs_naive"] > 1.0
    assert "rmse naive/est" in capsys.readouterr().out
