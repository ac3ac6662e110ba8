"""The production-profile tests use the loopback webhook CRM of the act tests."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "act"))
