"""The landing directory: where CDC files arrive, one or more per event day.

File names carry the day they were produced for: ``events-YYYY-MM-DD[-anything].jsonl``. The
observe assets are partitioned by that day; a file without a date in its name is ingested by
the sensor under the day it was first seen.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

_DAY = re.compile(r"(\d{4}-\d{2}-\d{2})")


def file_day(path: str | Path) -> date | None:
    """The day in a landing file's name, or None if it has none (or an impossible one)."""
    match = _DAY.search(Path(path).name)
    if not match:
        return None
    try:
        return date.fromisoformat(match.group(1))
    except ValueError:
        return None


def landing_files(landing_dir: Path, day: date | None = None) -> list[Path]:
    """Complete-looking ``*.jsonl`` files in ``landing_dir``, sorted; only ``day``'s if given.

    Files still being written by a producer that renames on completion (``.tmp`` suffix or a
    leading dot) are skipped.
    """
    if not landing_dir.exists():
        return []
    files = [
        p for p in sorted(landing_dir.glob("*.jsonl")) if p.is_file() and not p.name.startswith(".")
    ]
    if day is not None:
        files = [p for p in files if file_day(p) == day]
    return files
