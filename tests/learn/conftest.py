"""Fixtures of the learn-stage tests: every test gets its own JOURNEY_HOME."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_home(journey_home):
    """Run each learn test inside a fresh JOURNEY_HOME under its tmp_path."""
    return journey_home
