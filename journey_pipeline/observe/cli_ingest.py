"""``journey ingest FILE...``: the same ingestion code as the observe assets, on named files.

:func:`run_ingest` returns the summary as a dict; :func:`emit_summary` prints it for people
and, as its last line, as one JSON object for scripts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from journey_pipeline.observe.ingest import ingest_files
from journey_pipeline.settings import Settings, load_settings


def run_ingest(
    paths: Sequence[str | Path],
    settings: Settings | None = None,
    *,
    follow: bool = False,
) -> dict[str, Any]:
    """Ingest ``paths`` into ``settings.warehouse_path`` as one batch; return its summary dict.

    Whole files are read (an unterminated last line included) unless ``follow`` is true.
    Raises ``FileNotFoundError`` naming every missing path before anything is ingested.
    """
    settings = settings or load_settings()
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"no such file: {', '.join(missing)}")
    settings.ensure_dirs()
    summary = ingest_files(settings.warehouse_path, paths, settings, follow=follow)
    result = summary.as_dict()
    result["warehouse"] = str(settings.warehouse_path)
    return result


def emit_summary(summary: dict[str, Any], echo: Callable[[str], None] = print) -> None:
    """Print a readable summary, then the whole summary as one JSON object on the last line."""
    echo(
        f"received {summary['received']}, accepted {summary['accepted']}, "
        f"duplicates {summary['duplicates']}, dead-lettered {summary['dead_lettered']}"
        f" (batch {summary['batch_id']})"
    )
    for reason, count in summary.get("reasons", {}).items():
        echo(f"  dead letter: {reason} x{count}")
    echo(json.dumps(summary, sort_keys=True))
