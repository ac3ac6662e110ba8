"""The ingestion benchmark runs end to end on a small file and reports consistent figures."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.slow
def test_bench_ingest_reports_both_throughputs_and_their_ratio(tmp_path, monkeypatch):
    # Importable by name, so that the benchmark's child processes can import it too.
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    bench = importlib.import_module("bench_ingest")
    result = bench.main(["--events", "3000", "--workdir", str(tmp_path)])
    assert result["ingest_accepted"] == 3000 and result["ingest_dead_lettered"] == 0
    expected = result["ingest_events_per_s"] / result["read_json_events_per_s"]
    assert result["ratio_vs_read_json"] == pytest.approx(expected, rel=0.01)
    assert result["ingest_peak_rss_mib"] > 0
