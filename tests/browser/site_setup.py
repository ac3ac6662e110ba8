"""Build the data a browser test looks at: a simulated world and one finished Dagster run."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dagster_ui import REPO_ROOT, VENV_BIN, DagsterDevServer, DagsterUIError

ARTIFACTS_DIR = REPO_ROOT / "tests" / "artifacts"
SIMULATED_DAYS = ("2026-01-01", "2026-01-02")
LANDING_SENSOR = "landing_files_sensor"


@dataclass(frozen=True)
class DagsterSite:
    """A running `dagster dev` over an isolated JOURNEY_HOME and DAGSTER_HOME."""

    server: DagsterDevServer
    journey_home: Path
    dagster_home: Path
    simulated_home: Path  # where `journey simulate` wrote, and the seed run ingested from
    seeded_run_id: str


def simulate_world(journey_home: Path, env: dict[str, str]) -> list[Path]:
    """`journey simulate` two days of 300 contacts into ``journey_home``; return the landing files."""
    result = subprocess.run(
        [str(VENV_BIN / "journey"), "simulate", "--days", "2", "--contacts", "300"],
        env={**env, "JOURNEY_HOME": str(journey_home)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise DagsterUIError(
            f"journey simulate failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    files = sorted((journey_home / "landing").glob("*.jsonl"))
    if len(files) != len(SIMULATED_DAYS):
        raise DagsterUIError(f"expected one landing file per simulated day, got {files}")
    return files


def run_ingest_partition(env: dict[str, str], partition: str, log_path: Path) -> str:
    """Run ingest_landing_job for one day with the Dagster CLI; return the run id.

    In: an environment naming the JOURNEY_HOME to ingest and the DAGSTER_HOME to record the
    run in, and a partition key. The webserver lists the run like any a user started.
    """
    with open(log_path, "wb") as log:
        result = subprocess.run(
            [
                str(VENV_BIN / "dagster"),
                "job",
                "execute",
                "-m",
                "journey_pipeline.definitions",
                "-j",
                "ingest_landing_job",
                "--tags",
                json.dumps({"dagster/partition": partition}),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=300,
        )
    output = log_path.read_text(errors="replace")
    if result.returncode != 0 or "RUN_SUCCESS" not in output:
        raise DagsterUIError(f"seed run failed (exit {result.returncode}):\n{output[-4000:]}")
    return run_id_of_success(output)


def run_id_of_success(output: str) -> str:
    """The run id on the RUN_SUCCESS line of Dagster's console log.

    Lines read "<time> - dagster - <level> - <job> - <run id> - <pid> - RUN_SUCCESS - ...".
    """
    for line in output.splitlines():
        fields = [field.strip() for field in line.split(" - ")]
        if len(fields) > 6 and fields[6] == "RUN_SUCCESS":
            return fields[4]
    raise DagsterUIError("no RUN_SUCCESS line in the seed run's output")
