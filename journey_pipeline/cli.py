"""The ``journey`` command: simulate a world, ingest files, run the loop, benchmark.

Every command honours ``JOURNEY_HOME`` (where state lives, default ./data) and
``JOURNEY_PROFILE`` (local, the default, or production).
"""

from __future__ import annotations

import json
import sys
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from journey_pipeline.settings import SettingsError, load_settings

app = typer.Typer(
    name="journey",
    help="journey-pipeline: CRM events -> features -> decisions -> CRM write-back -> learning.",
    no_args_is_help=True,
    add_completion=False,
    # A traceback with every frame's locals (DataFrames, models) is unreadable and slow.
    pretty_exceptions_show_locals=False,
)
console = Console(stderr=True)


def _settings():
    try:
        settings = load_settings()
    except SettingsError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc
    settings.ensure_dirs()
    return settings


def _warning_to(file, message, category, filename, lineno, _file=None, line=None) -> None:
    """``warnings.showwarning`` writing to ``file`` (the run log) instead of stderr."""
    import warnings

    file.write(warnings.formatwarning(message, category, filename, lineno, line))


def _progress(target: Console | None = None) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=target or console,
        transient=False,
    )


@app.command()
def simulate(
    days: Annotated[
        int, typer.Option(min=1, help="Days to simulate, continuing the saved world.")
    ] = 1,
    contacts: Annotated[int, typer.Option(min=1, help="Contacts in a new world.")] = 5000,
    seed: Annotated[int, typer.Option(help="Random seed of a new world.")] = 0,
    start_date: Annotated[
        str, typer.Option(help="First day of a new world (YYYY-MM-DD).")
    ] = "2026-01-01",
    drift_day: Annotated[
        int | None, typer.Option(help="Day index from which behaviour drifts.")
    ] = None,
    debezium: Annotated[
        bool, typer.Option(help="Write contact changes as Debezium envelopes.")
    ] = False,
) -> None:
    """Simulate DAYS days of the customer world: writes landing/*.jsonl and updates crm.db."""
    from journey_pipeline.sim.run import simulate as run_simulation

    settings = _settings()
    with _progress() as progress:
        task = progress.add_task("simulate", total=days)
        summary = run_simulation(
            settings,
            days=days,
            contacts=contacts,
            seed=seed,
            start_date=date.fromisoformat(start_date),
            drift_day=drift_day,
            debezium=debezium,
            progress=lambda *_: progress.advance(task),
        )
    console.print(f"simulated into {settings.home}")
    print(json.dumps(summary, default=str))


@app.command()
def ingest(
    files: Annotated[list[Path], typer.Argument(help="JSONL files of canonical events.")],
) -> None:
    """Ingest FILES into the warehouse: validate, tokenise PII, dedup, dead-letter bad lines.

    Prints a human summary on stderr and one JSON object on the last line of stdout.
    """
    from journey_pipeline.observe.ingest import ingest_files

    settings = _settings()
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        console.print(f"[red]no such file:[/red] {', '.join(missing)}")
        raise typer.Exit(2)
    summary = ingest_files(settings.warehouse_path, files, settings, follow=False).as_dict()
    console.print(
        f"received {summary['received']:,}  accepted {summary['accepted']:,}  "
        f"duplicates {summary['duplicates']:,}  dead-lettered {summary['dead_lettered']:,}"
    )
    print(json.dumps(summary, default=str))


@app.command()
def demo(
    days: Annotated[int, typer.Option(min=1, help="Simulated days to run the loop for.")] = 14,
    contacts: Annotated[int, typer.Option(min=10, help="Contacts in the simulated world.")] = 5000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    drift_day: Annotated[
        int | None, typer.Option(help="Day index from which behaviour drifts.")
    ] = None,
    verbose: Annotated[
        bool, typer.Option(help="Show the runs' Dagster and dbt logs instead of writing a file.")
    ] = False,
) -> None:
    """Run the closed loop on a simulated world through Dagster, day by day, and report.

    Prints each day, the policy's margin against the oracle and baselines; writes the report.
    The runs' logs go to JOURNEY_HOME/logs/demo.log (all events are in the Dagster instance).
    """
    import contextlib
    import functools
    import logging
    import os
    import warnings

    from journey_pipeline.demo import run_demo

    settings = _settings()
    log_path = settings.home / "logs" / "demo.log"
    try:
        with contextlib.ExitStack() as stack:
            if not verbose:
                # dbt's per-node lines (re-emitted on stdout by dagster-dbt) go to the log
                # file; the terminal keeps the progress bars, the tables and the JSON line.
                log_path.parent.mkdir(parents=True, exist_ok=True)
                log_file = stack.enter_context(log_path.open("a", encoding="utf-8"))
                stack.enter_context(contextlib.redirect_stdout(log_file))
                # Library warnings too (the PII key one was shown when settings loaded).
                stack.enter_context(warnings.catch_warnings())
                warnings.showwarning = functools.partial(_warning_to, log_file)
                os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
                console.print(f"run logs: {log_path} (or --verbose)")
                # Whatever else writes to stderr during the runs (a refused promotion's failed
                # step, MLflow's registry messages) goes to the log too; the bars keep the
                # terminal's stderr.
                bars = Console(file=sys.stderr)
                stack.enter_context(contextlib.redirect_stderr(log_file))
                mlflow_logger = logging.getLogger("mlflow")
                stack.callback(mlflow_logger.setLevel, mlflow_logger.level)
                mlflow_logger.setLevel(logging.WARNING)
            else:
                bars = console
            progress = stack.enter_context(_progress(bars))
            summary = run_demo(
                settings,
                days=days,
                contacts=contacts,
                seed=seed,
                drift_day=drift_day,
                progress=progress,
                log_level="INFO" if verbose else "WARNING",
            )
    except SettingsError as exc:  # e.g. the production Dagster instance's variables
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc
    from journey_pipeline.demo import render_margins, render_summary, render_weekly

    console.print(render_summary(summary))
    margins = render_margins(summary)
    if margins is None:
        console.print("no live decision could be evaluated against the oracle yet")
    else:
        console.print(margins)
        console.print(render_weekly(summary))
    if summary["report"]:
        console.print(f"report: {summary['report']}")
    print(json.dumps(summary, default=str))


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Serve real-time decisions over HTTP (POST /v1/decisions; keys from JOURNEY_API_KEYS)."""
    import socket

    from journey_pipeline.serve.app import run_server

    settings = _settings()
    with socket.socket() as probe:
        if probe.connect_ex((host, port)) == 0:
            console.print(
                f"[red]port {port} on {host} is already in use[/red]: stop the other process "
                f"or choose another with --port"
            )
            raise typer.Exit(2)
    run_server(settings, host, port)


@app.command()
def stream(
    bootstrap: Annotated[
        str | None, typer.Option(help="Kafka bootstrap servers (default JOURNEY_KAFKA_BOOTSTRAP).")
    ] = None,
    max_events: Annotated[int | None, typer.Option(help="Stop after this many events.")] = None,
    idle_timeout: Annotated[
        float | None, typer.Option(help="Stop after this many idle seconds.")
    ] = None,
) -> None:
    """Decide on triggering events from Kafka (crm.contact_events) and write back through the outbox."""
    from journey_pipeline.serve.stream import run_stream

    settings = _settings()
    bootstrap = bootstrap or settings.kafka_bootstrap_servers
    if not bootstrap:
        console.print(
            "[red]no Kafka brokers[/red]: pass --bootstrap or set JOURNEY_KAFKA_BOOTSTRAP"
        )
        raise typer.Exit(2)
    summary = run_stream(settings, bootstrap, max_events=max_events, idle_timeout_s=idle_timeout)
    print(json.dumps(summary, default=str))


@app.command()
def control(
    action: Annotated[str, typer.Argument(help="pause | resume | promote | rollback | status")],
    who: Annotated[str, typer.Option(help="Who takes the action (recorded).")] = "",
    why: Annotated[str, typer.Option(help="Why (recorded).")] = "",
    version: Annotated[str | None, typer.Option(help="Model version, for promote.")] = None,
) -> None:
    """Human control of the live policy; every action is recorded with who and why."""
    from journey_pipeline.decide import control as controls

    settings = _settings()
    try:
        if action == "status":
            result = controls.control_state(settings)
        elif action == "pause":
            result = controls.pause_autonomy(settings, who, why)
        elif action == "resume":
            result = controls.resume_autonomy(settings, who, why)
        elif action == "rollback":
            result = controls.rollback(settings, who, why)
        elif action == "promote":
            if not version:
                raise ValueError("promote needs --version")
            result = controls.promote(settings, version, who, why)
        else:
            raise ValueError(
                f"unknown action {action!r}: pause, resume, promote, rollback or status"
            )
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    print(json.dumps(result, default=str))


@app.command()
def bench(
    name: Annotated[
        str | None, typer.Argument(help="One benchmark (file bench/bench_NAME.py).")
    ] = None,
    quick: Annotated[bool, typer.Option(help="Smaller sizes, for a smoke run.")] = False,
) -> None:
    """Run the benchmarks in bench/ (each prints its ratio against a baseline of the same run)."""
    import importlib.util

    bench_dir = Path(__file__).resolve().parents[1] / "bench"
    paths = sorted(bench_dir.glob("bench_*.py"))
    if name:
        paths = [p for p in paths if p.stem == f"bench_{name}"]
        if not paths:
            known = ", ".join(
                p.stem.removeprefix("bench_") for p in sorted(bench_dir.glob("bench_*.py"))
            )
            console.print(f"[red]no benchmark {name!r}[/red]; known: {known}")
            raise typer.Exit(2)
    results = {}
    for path in paths:
        console.rule(path.stem)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        results[path.stem] = module.main(["--quick"] if quick else [])
    print(json.dumps(results, default=str))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
    except ModuleNotFoundError as exc:  # a stage's library, imported when the command runs
        console.print(
            f"[red]missing dependency {exc.name!r}[/red]: install the pinned set with "
            "`make setup` (or `pip install -c constraints.txt -e .`) in this environment"
        )
        sys.exit(2)


if __name__ == "__main__":
    main()
