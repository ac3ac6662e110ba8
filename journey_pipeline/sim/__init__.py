"""The customer-world simulator and the embedded local CRM.

- :mod:`journey_pipeline.sim.world`: :class:`~journey_pipeline.sim.world.World`, contacts with
  latent traits simulated day by day, with an oracle of expected margins (ground truth).
- :mod:`journey_pipeline.sim.crm`: :class:`~journey_pipeline.sim.crm.LocalCrmStore`, the
  SQLite CRM (contacts, tasks, change log) the world keeps in sync.
- :mod:`journey_pipeline.sim.run`: :func:`~journey_pipeline.sim.run.simulate`, the world run
  against the stores under ``JOURNEY_HOME``.

Submodules are imported on first use so that reading the CRM schema stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "World": "journey_pipeline.sim.world",
    "DayReport": "journey_pipeline.sim.world",
    "LocalCrmStore": "journey_pipeline.sim.crm",
    "simulate": "journey_pipeline.sim.run",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
