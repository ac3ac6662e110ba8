"""Fixtures of the observe tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def landing(settings) -> Path:
    """The test's landing directory (created by the ``settings`` fixture)."""
    return settings.landing_dir
