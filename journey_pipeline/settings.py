"""One typed settings object, read from the environment at run time (never at import time).

Every path the project writes derives from ``JOURNEY_HOME`` (default ``./data``), so tests and
parallel runs each get their own home. ``JOURNEY_PROFILE`` selects ``local`` (embedded stores,
the default) or ``production`` (PostgreSQL, Redis, Kafka).

The production profile refuses to start without what it needs, and the error names every
missing variable: ``JOURNEY_PII_KEY``, ``JOURNEY_POSTGRES_DSN`` (Feast SQL registry, MLflow,
CRM outbox), ``JOURNEY_REDIS_URL`` (Feast online store), and the chosen CRM adapter's endpoint
and secret. The Dagster instance's own variables are checked by
:func:`journey_pipeline.instance.dagster_instance`.
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
        """``JOURNEY_MLFLOW_URI``; else the PostgreSQL DSN under the production profile; else
        ``sqlite:///$JOURNEY_HOME/mlflow.db``."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        if self.is_production and self.postgres_dsn:
            return postgresql_url(self.postgres_dsn)
        return f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

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


def postgresql_url(dsn: str) -> str:
    """``dsn`` with the ``postgresql://`` scheme SQLAlchemy expects (``postgres://`` is the
    libpq spelling many platforms hand out)."""
    return "postgresql://" + dsn[len("postgres://") :] if dsn.startswith("postgres://") else dsn


# What each variable the production profile requires is for (checked by load_settings).
PRODUCTION_REQUIRED = {
    "JOURNEY_PII_KEY": (
        "the secret key that tokenises email addresses and phone numbers, e.g. "
        "`export JOURNEY_PII_KEY=$(openssl rand -hex 32)`"
    ),
    "JOURNEY_POSTGRES_DSN": (
        "PostgreSQL for the Feast SQL registry, MLflow and the CRM outbox, e.g. "
        "postgresql://journey:secret@db:5432/journey"
    ),
    "JOURNEY_REDIS_URL": "Redis for the Feast online store, e.g. redis://redis:6379/0",
}
CRM_REQUIRED = {
    "webhook": {
        "JOURNEY_CRM_WEBHOOK_URL": "the endpoint the webhook CRM adapter POSTs decisions to",
        "JOURNEY_CRM_WEBHOOK_SECRET": "the HMAC secret that signs each webhook body",
    },
    "hubspot": {"JOURNEY_HUBSPOT_TOKEN": "the HubSpot private-app access token"},
}
CRM_KINDS = ("local", "webhook", "hubspot")


def missing_production_variables(env: Mapping[str, str]) -> list[tuple[str, str]]:
    """``(variable, what it is for)`` for each variable the production profile needs that
    ``env`` leaves unset or empty, in a stable order."""
    wanted = dict(PRODUCTION_REQUIRED)
    wanted.update(CRM_REQUIRED.get(env.get("JOURNEY_CRM", "local").strip().lower(), {}))
    return [(name, why) for name, why in wanted.items() if not env.get(name, "").strip()]


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from ``env`` (default: the process environment)."""
    env = os.environ if env is None else env
    profile = env.get("JOURNEY_PROFILE", "local").strip().lower() or "local"
    if profile not in PROFILES:
        raise SettingsError(
            f"JOURNEY_PROFILE={profile!r} is not a profile; use one of {', '.join(PROFILES)}"
        )
    crm_kind = env.get("JOURNEY_CRM", "local").strip().lower() or "local"
    if crm_kind not in CRM_KINDS:
        raise SettingsError(
            f"JOURNEY_CRM={crm_kind!r} is not a CRM adapter; use one of {', '.join(CRM_KINDS)}"
        )
    home = Path(env.get("JOURNEY_HOME", "data")).expanduser().absolute()
    raw_key = env.get("JOURNEY_PII_KEY", "")
    if profile == "production":
        missing = missing_production_variables(env)
        if missing:
            raise SettingsError(
                "the production profile (JOURNEY_PROFILE=production) is missing "
                + "; ".join(f"{name}: {why}" for name, why in missing)
                + ". See docs/deploy.md for every production variable."
            )
    if raw_key:
        key, is_default = raw_key.encode(), False
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
        crm_kind=crm_kind,
        crm_webhook_url=env.get("JOURNEY_CRM_WEBHOOK_URL"),
        crm_webhook_secret=env.get("JOURNEY_CRM_WEBHOOK_SECRET"),
        hubspot_access_token=env.get("JOURNEY_HUBSPOT_TOKEN"),
        hubspot_base_url=env.get("JOURNEY_HUBSPOT_BASE_URL"),
        outbox_url=env.get("JOURNEY_OUTBOX_URL"),
    )
