"""One typed settings object, read from the environment at run time (never at import time).

Every path the project writes derives from ``JOURNEY_HOME`` (default ``./data``), so tests and
parallel runs each get their own home. ``JOURNEY_PROFILE`` selects ``local`` (embedded stores,
the default) or ``production`` (PostgreSQL, Redis, Kafka).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROFILES = ("local", "production")

# Only for local work: the production profile refuses to start without a real key.
DEV_PII_KEY = "journey-pipeline-development-key-do-not-use-in-production"


class SettingsError(ValueError):
    """A configuration value is missing or invalid; the message says what to set."""


class DevelopmentKeyWarning(UserWarning):
    """The PII tokenising key is the built-in development default."""


@dataclass(frozen=True)
class Settings:
    home: Path
    profile: str = "local"
    pii_key: bytes = DEV_PII_KEY.encode()
    pii_key_is_default: bool = True
    mlflow_tracking_uri: str | None = None
    kafka_bootstrap_servers: str | None = None
    kafka_topic: str = "crm.contact_events"
    kafka_group_id: str = "journey-observe"
    postgres_dsn: str | None = None
    redis_url: str | None = None
    crm_kind: str = "local"  # local | webhook | hubspot
    crm_webhook_url: str | None = None
    crm_webhook_secret: str | None = None
    hubspot_access_token: str | None = None
    hubspot_base_url: str | None = None
    outbox_url: str | None = None

    # Embedded stores, all under JOURNEY_HOME.
    @property
    def warehouse_path(self) -> Path:
        return self.home / "warehouse.duckdb"

    @property
    def landing_dir(self) -> Path:
        return self.home / "landing"

    @property
    def crm_path(self) -> Path:
        return self.home / "crm.db"

    @property
    def feast_dir(self) -> Path:
        return self.home / "feast"

    @property
    def feature_exports_dir(self) -> Path:
        return self.home / "features"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def sim_state_dir(self) -> Path:
        return self.home / "sim"

    @property
    def mlflow_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def is_production(self) -> bool:
        return self.profile == "production"

    def ensure_dirs(self) -> None:
        for path in (
            self.home,
            self.landing_dir,
            self.feast_dir,
            self.reports_dir,
            self.feature_exports_dir,
            self.sim_state_dir,
        ):
            path.mkdir(parents=True, exist_ok=True)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from ``env`` (default: the process environment)."""
    env = os.environ if env is None else env
    profile = env.get("JOURNEY_PROFILE", "local").strip().lower() or "local"
    if profile not in PROFILES:
        raise SettingsError(
            f"JOURNEY_PROFILE={profile!r} is not a profile; use one of {', '.join(PROFILES)}"
        )
    home = Path(env.get("JOURNEY_HOME", "data")).expanduser().absolute()
    raw_key = env.get("JOURNEY_PII_KEY", "")
    if raw_key:
        key, is_default = raw_key.encode(), False
    elif profile == "production":
        raise SettingsError(
            "JOURNEY_PII_KEY is not set. The production profile needs a secret key for "
            "tokenising email addresses and phone numbers: export JOURNEY_PII_KEY=<32+ random "
            "bytes>, e.g. `export JOURNEY_PII_KEY=$(openssl rand -hex 32)`."
        )
    else:
        key, is_default = DEV_PII_KEY.encode(), True
        warnings.warn(
            "JOURNEY_PII_KEY is not set: tokenising PII with the built-in DEVELOPMENT key. "
            "Tokens are not secret; set JOURNEY_PII_KEY before handling real data.",
            DevelopmentKeyWarning,
            stacklevel=2,
        )
    return Settings(
        home=home,
        profile=profile,
        pii_key=key,
        pii_key_is_default=is_default,
        mlflow_tracking_uri=env.get("JOURNEY_MLFLOW_URI"),
        kafka_bootstrap_servers=env.get("JOURNEY_KAFKA_BOOTSTRAP"),
        kafka_topic=env.get("JOURNEY_KAFKA_TOPIC", "crm.contact_events"),
        kafka_group_id=env.get("JOURNEY_KAFKA_GROUP", "journey-observe"),
        postgres_dsn=env.get("JOURNEY_POSTGRES_DSN"),
        redis_url=env.get("JOURNEY_REDIS_URL"),
        crm_kind=env.get("JOURNEY_CRM", "local"),
        crm_webhook_url=env.get("JOURNEY_CRM_WEBHOOK_URL"),
        crm_webhook_secret=env.get("JOURNEY_CRM_WEBHOOK_SECRET"),
        hubspot_access_token=env.get("JOURNEY_HUBSPOT_TOKEN"),
        hubspot_base_url=env.get("JOURNEY_HUBSPOT_BASE_URL"),
        outbox_url=env.get("JOURNEY_OUTBOX_URL"),
    )
