"""Dagster resources. Each stage's external systems are ConfigurableResources resolved from
the settings profile at run time."""

from __future__ import annotations

import dagster as dg

from journey_pipeline.settings import Settings, load_settings


class JourneyResource(dg.ConfigurableResource):
    """Where the loop keeps its state. Empty fields fall back to the environment
    (``JOURNEY_HOME``, ``JOURNEY_PROFILE``) when the run starts, not at import time."""

    home: str = ""
    profile: str = ""

    def settings(self) -> Settings:
        import os

        env = dict(os.environ)
        if self.home:
            env["JOURNEY_HOME"] = self.home
        if self.profile:
            env["JOURNEY_PROFILE"] = self.profile
        settings = load_settings(env)
        settings.ensure_dirs()
        return settings
