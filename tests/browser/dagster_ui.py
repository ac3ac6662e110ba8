"""Drive a real `dagster dev` webserver: start and stop it, talk GraphQL to it, open it in Chromium.

Plain functions and classes so the browser test reads as the user's first ten minutes:
start the UI, look at the loop's graph and runs, launch a backfill and watch it finish.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

# Flags that keep a headless Chromium quiet and self-contained on a shared CI machine.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--window-size=1600,1000",
)

BACKFILL_DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
RUN_DONE = {"SUCCESS", "FAILURE", "CANCELED"}


class DagsterUIError(RuntimeError):
    """The webserver did not come up, or answered a request with an error."""


def browser_skip_reason() -> str | None:
    """Why the browser test cannot run on this machine, or None when it can.

    Checks for Selenium in the environment and Debian's chromium and chromium-driver.
    """
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install selenium into the project's environment"
    for binary, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not binary.exists():
            return f"{binary} not found: apt-get install {package}"
    return None


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dagster_env(journey_home: Path, dagster_home: Path) -> dict[str, str]:
    """The environment for Dagster processes of one isolated site.

    In: the site's JOURNEY_HOME and DAGSTER_HOME. Out: a copy of this process's environment
    pointing at them, with the project's virtualenv first on PATH (dagster-dbt looks `dbt` up
    on PATH, and `make test` runs pytest without activating the virtualenv).
    """
    env = dict(os.environ)
    env.update(
        JOURNEY_HOME=str(journey_home),
        DAGSTER_HOME=str(dagster_home),
        DAGSTER_DISABLE_TELEMETRY="1",
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    env.pop("JOURNEY_PROFILE", None)
    return env


def prepare_dagster_home(dagster_home: Path) -> Path:
    """Create DAGSTER_HOME with the repository's dagster.yaml (SQLite storage, run queue).

    The instance's storage is created here, once: two Dagster processes opening a fresh
    home at the same moment race to create the same SQLite schema and one of them fails.
    """
    import dagster as dg

    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.get_runs_count()  # touches run, event-log index and schedule storage
        instance.all_instigator_state()
    return dagster_home


@dataclass
class GraphQLClient:
    """A small client of the webserver's /graphql endpoint."""

    base_url: str
    timeout: float = 30.0

    def execute(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """POST one GraphQL document; return its ``data`` or raise on transport/GraphQL errors."""
        response = httpx.post(
            f"{self.base_url}/graphql",
            json={"query": query, "variables": dict(variables or {})},
            timeout=self.timeout,
        )
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise DagsterUIError(f"GraphQL errors: {body['errors']}")
        return body["data"]


WORKSPACE_QUERY = """
query Workspace {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on PythonError { message }
          ... on RepositoryLocation { repositories { name } }
        }
      }
    }
    ... on PythonError { message }
  }
}
"""


@dataclass(frozen=True)
class RepositorySelector:
    """Where a job lives in the workspace: code location name and repository name."""

    location_name: str
    repository_name: str

    def as_graphql(self) -> dict[str, str]:
        return {
            "repositoryLocationName": self.location_name,
            "repositoryName": self.repository_name,
        }


def loaded_repository(client: GraphQLClient) -> RepositorySelector | None:
    """The first repository of the loaded code location, or None while it is still loading.

    Raises DagsterUIError when the code location failed to load, with Dagster's message.
    """
    workspace = client.execute(WORKSPACE_QUERY)["workspaceOrError"]
    if workspace["__typename"] != "Workspace":
        raise DagsterUIError(f"workspace failed: {workspace.get('message')}")
    for entry in workspace["locationEntries"]:
        if entry["loadStatus"] != "LOADED" or entry["locationOrLoadError"] is None:
            return None
        location = entry["locationOrLoadError"]
        if location["__typename"] == "PythonError":
            raise DagsterUIError(
                f"code location {entry['name']} failed to load: {location['message']}"
            )
        return RepositorySelector(entry["name"], location["repositories"][0]["name"])
    return None


class DagsterDevServer:
    """`dagster dev` (webserver and daemon) on loopback, in its own process group.

    Use as a context manager: entering starts the process, exiting terminates the whole
    group (webserver, daemon, code server and any run it launched) even on failure.
    """

    def __init__(self, env: Mapping[str, str], log_path: Path, port: int | None = None) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.client = GraphQLClient(self.base_url)
        self.process: subprocess.Popen[bytes] | None = None
        self.repository: RepositorySelector | None = None

    def start(self) -> None:
        """Launch `dagster dev -w workspace.yaml` from the repository root."""
        command = [
            str(VENV_BIN / "dagster"),
            "dev",
            "-w",
            "workspace.yaml",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_until_loaded(self, timeout: float = 180.0) -> RepositorySelector:
        """Poll GraphQL until the code location is loaded; return its repository selector.

        The code location imports dbt, Feast and MLflow, so this takes a while. Raises
        DagsterUIError with the tail of the server log on exit, load error or timeout.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise DagsterUIError(f"dagster dev exited early:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                repository = loaded_repository(self.client)
                if repository is not None:
                    self.repository = repository
                    return repository
            time.sleep(1.0)
        raise DagsterUIError(f"dagster dev not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's combined output, for failure messages."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, grace: float = 10.0) -> None:
        """Terminate the process group: SIGTERM, then SIGKILL after ``grace`` seconds.

        `dagster dev` winds its children down slowly on SIGTERM, and the runs it launched are
        finished or disposable by now, so a short grace is enough.
        """
        if self.process is None:
            return
        pgid = self.process.pid  # start_new_session makes the child its group's leader
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        if not self._wait_for_group(pgid, grace):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            # SIGKILL is delivered at once, but processes take a moment to leave.
            self._wait_for_group(pgid, 10.0)

    def _wait_for_group(self, pgid: int, timeout: float) -> bool:
        """Reap the leader and wait up to ``timeout`` s for the group to go; True if it did."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=0.1)
            if not process_group_alive(pgid):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)

    def __enter__(self) -> DagsterDevServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def process_group_alive(pgid: int) -> bool:
    """Whether a process of the group is still running (zombies awaiting reaping do not count).

    Reads /proc where there is one; elsewhere any member, zombie or not, counts.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after ")".
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


LAUNCH_BACKFILL = """
mutation LaunchBackfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { invalidOutputName }
    ... on UnauthorizedError { message }
    ... on PartitionSetNotFoundError { message }
    ... on InvalidSubsetError { message }
    ... on RunConflict { message }
    ... on ConflictingExecutionParamsError { message }
    ... on PresetNotFoundError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on NoModeProvidedError { message }
  }
}
"""

BACKFILL_STATUS = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      id
      status
      partitionNames
      error { message }
      runs { runId status tags { key value } }
    }
    ... on PythonError { message }
    ... on BackfillNotFoundError { message }
  }
}
"""


@dataclass(frozen=True)
class BackfillRun:
    """One run a backfill launched: its partition and final status."""

    run_id: str
    partition: str | None
    status: str


@dataclass(frozen=True)
class BackfillOutcome:
    """A finished backfill: its status, requested partitions and the runs it launched."""

    backfill_id: str
    status: str
    partitions: tuple[str, ...]
    runs: tuple[BackfillRun, ...]


def launch_job_backfill(
    client: GraphQLClient,
    repository: RepositorySelector,
    job_name: str,
    partitions: Sequence[str],
) -> str:
    """Launch a backfill of ``partitions`` of a partitioned job; return the backfill id."""
    params = {
        "selector": {
            "partitionSetName": f"{job_name}_partition_set",
            "repositorySelector": repository.as_graphql(),
        },
        "partitionNames": list(partitions),
        "title": f"{job_name} {partitions[0]}..{partitions[-1]}",
    }
    result = client.execute(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    if result["__typename"] != "LaunchBackfillSuccess":
        raise DagsterUIError(f"backfill not launched: {result}")
    return result["backfillId"]


def wait_for_backfill(
    client: GraphQLClient, backfill_id: str, timeout: float = 180.0, poll: float = 2.0
) -> BackfillOutcome:
    """Poll a backfill until it and every run it launched have finished.

    Out: the backfill's final status and its runs with their partitions and statuses.
    Raises DagsterUIError on timeout, with the last status seen.
    """
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = client.execute(BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        if last["__typename"] != "PartitionBackfill":
            raise DagsterUIError(f"backfill {backfill_id} not readable: {last}")
        runs = tuple(
            BackfillRun(
                run_id=run["runId"],
                partition={t["key"]: t["value"] for t in run["tags"]}.get("dagster/partition"),
                status=run["status"],
            )
            for run in last["runs"]
        )
        if last["status"] in BACKFILL_DONE and all(run.status in RUN_DONE for run in runs):
            return BackfillOutcome(
                backfill_id=backfill_id,
                status=last["status"],
                partitions=tuple(last["partitionNames"] or ()),
                runs=runs,
            )
        time.sleep(poll)
    raise DagsterUIError(f"backfill {backfill_id} unfinished after {timeout:.0f}s: {last}")


@contextlib.contextmanager
def headless_chromium(user_data_dir: Path) -> Iterator[Any]:
    """A Selenium WebDriver on Debian's headless Chromium with a fresh profile; quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for_text(driver: Any, texts: Sequence[str], timeout: float = 60.0) -> str:
    """Wait until the page's visible text contains every one of ``texts``; return that text.

    Raises AssertionError naming the missing ones (and the text seen) on timeout.
    """
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        with contextlib.suppress(WebDriverException):
            body = driver.find_element(By.TAG_NAME, "body").text
            if all(text in body for text in texts):
                return body
        time.sleep(0.5)
    missing = [text for text in texts if text not in body]
    raise AssertionError(
        f"page {driver.current_url} never showed {missing}; it showed:\n{body[:3000]}"
    )


def save_screenshot(driver: Any, path: Path) -> Path:
    """Save a PNG of the current page to ``path``; return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not driver.save_screenshot(str(path)):
        raise DagsterUIError(f"Chromium could not save a screenshot to {path}")
    return path


SENSOR_STATE = """
query SensorState($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { name sensorState { id status } }
    ... on SensorNotFoundError { message }
    ... on PythonError { message }
  }
}
"""

STOP_SENSOR = """
mutation StopSensor($id: String!) {
  stopSensor(id: $id) {
    __typename
    ... on StopSensorMutationResult { instigationState { status } }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}
"""


def _sensor(
    client: GraphQLClient, repository: RepositorySelector, sensor_name: str, query: str
) -> dict[str, Any]:
    """The ``Sensor`` a ``sensorOrError`` query returns; DagsterUIError when there is none."""
    selector = {**repository.as_graphql(), "sensorName": sensor_name}
    sensor = client.execute(query, {"selector": selector})["sensorOrError"]
    if sensor["__typename"] != "Sensor":
        raise DagsterUIError(f"sensor {sensor_name} not found: {sensor}")
    return sensor


def stop_sensor(client: GraphQLClient, repository: RepositorySelector, sensor_name: str) -> str:
    """Stop a sensor through the webserver, as the UI's toggle does; return its new status."""
    sensor = _sensor(client, repository, sensor_name, SENSOR_STATE)
    result = client.execute(STOP_SENSOR, {"id": sensor["sensorState"]["id"]})["stopSensor"]
    if result["__typename"] != "StopSensorMutationResult":
        raise DagsterUIError(f"sensor {sensor_name} not stopped: {result}")
    return result["instigationState"]["status"]


SENSOR_TICKS = """
query SensorTicks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor {
      sensorState { status ticks(limit: 50) { status runIds runKeys skipReason timestamp } }
    }
    ... on SensorNotFoundError { message }
    ... on PythonError { message }
  }
}
"""

RUNS_WITH_TAG = """
query RunsWithTag($filter: RunsFilter!) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { results { runId status jobName tags { key value } } }
    ... on PythonError { message }
  }
}
"""


@dataclass(frozen=True)
class SensorTick:
    """One evaluation of a sensor by the daemon, as the webserver reports it."""

    status: str
    run_ids: tuple[str, ...]
    run_keys: tuple[str, ...]
    skip_reason: str | None


def sensor_ticks(
    client: GraphQLClient, repository: RepositorySelector, sensor_name: str
) -> list[SensorTick]:
    """The sensor's latest ticks, newest first."""
    sensor = _sensor(client, repository, sensor_name, SENSOR_TICKS)
    return [
        SensorTick(t["status"], tuple(t["runIds"]), tuple(t["runKeys"]), t["skipReason"])
        for t in sensor["sensorState"]["ticks"]
    ]


def runs_with_tag(client: GraphQLClient, key: str, value: str) -> list[dict[str, Any]]:
    """Runs carrying the tag ``key=value`` (runId, status, jobName, tags as a dict)."""
    result = client.execute(RUNS_WITH_TAG, {"filter": {"tags": [{"key": key, "value": value}]}})
    runs = result["runsOrError"]
    if runs["__typename"] != "Runs":
        raise DagsterUIError(f"runs not readable: {runs}")
    return [{**run, "tags": {t["key"]: t["value"] for t in run["tags"]}} for run in runs["results"]]


def wait_for_sensor_run(
    client: GraphQLClient, sensor_name: str, timeout: float = 300.0, poll: float = 3.0
) -> dict[str, Any]:
    """Poll until a run launched by ``sensor_name`` has finished; return it (see
    :func:`runs_with_tag`). Raises DagsterUIError on timeout with the runs seen."""
    deadline = time.monotonic() + timeout
    runs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        runs = runs_with_tag(client, "dagster/sensor_name", sensor_name)
        finished = [run for run in runs if run["status"] in RUN_DONE]
        if finished:
            return finished[0]
        time.sleep(poll)
    raise DagsterUIError(f"no finished run of {sensor_name} after {timeout:.0f}s: {runs}")


def dismiss_welcome_dialog(driver: Any, timeout: float = 3.0) -> bool:
    """Close the "Join the Dagster community" dialog a fresh browser profile sees once.

    Returns whether a dialog was closed. The dialog is Dagster's, not the project's; it
    would otherwise cover the screenshots.
    """
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        buttons = driver.find_elements(By.XPATH, "//button[normalize-space()='Skip']")
        for button in buttons:
            with contextlib.suppress(WebDriverException):
                if button.is_displayed():
                    button.click()
                    time.sleep(0.5)  # the dialog fades out
                    return True
        time.sleep(0.3)
    return False


def graph_node_positions(driver: Any, expected: int, timeout: float = 30.0) -> dict[str, float]:
    """Labels of the asset graph's nodes mapped to their left edge in pixels.

    The graph renders each node (here, each collapsed asset group) as an SVG foreignObject.
    Waits until at least ``expected`` labelled nodes are drawn.
    """
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    positions: dict[str, float] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(WebDriverException):
            positions = {
                node.text.strip(): float(node.rect["x"])
                for node in driver.find_elements(By.CSS_SELECTOR, "svg foreignObject")
                if node.text.strip()
            }
            if len(positions) >= expected:
                return positions
        time.sleep(0.5)
    return positions
