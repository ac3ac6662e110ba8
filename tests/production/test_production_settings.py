"""The production profile's configuration errors name the variable to set."""

from __future__ import annotations

import pytest

from journey_pipeline.settings import SettingsError, load_settings

COMPLETE = {
    "JOURNEY_PROFILE": "production",
    "JOURNEY_PII_KEY": "k" * 32,
    "JOURNEY_POSTGRES_DSN": "postgres://journey:pw@db:5432/journey",
    "JOURNEY_REDIS_URL": "redis://redis:6379/0",
}


def test_a_complete_production_environment_loads(tmp_path):
    settings = load_settings({**COMPLETE, "JOURNEY_HOME": str(tmp_path)})
    assert settings.is_production and not settings.pii_key_is_default
    # MLflow follows the PostgreSQL DSN unless JOURNEY_MLFLOW_URI says otherwise.
    assert settings.mlflow_uri == "postgresql://journey:pw@db:5432/journey"
    explicit = load_settings(
        {**COMPLETE, "JOURNEY_HOME": str(tmp_path), "JOURNEY_MLFLOW_URI": "http://mlflow:5000"}
    )
    assert explicit.mlflow_uri == "http://mlflow:5000"


@pytest.mark.parametrize(
    "missing", ["JOURNEY_PII_KEY", "JOURNEY_POSTGRES_DSN", "JOURNEY_REDIS_URL"]
)
def test_each_missing_variable_is_named(tmp_path, missing):
    env = {**COMPLETE, "JOURNEY_HOME": str(tmp_path)}
    env[missing] = ""
    with pytest.raises(SettingsError) as error:
        load_settings(env)
    message = str(error.value)
    assert missing in message and "docs/deploy.md" in message
    assert all(name not in message for name in COMPLETE if name not in (missing, "JOURNEY_PROFILE"))


def test_the_chosen_crm_adapter_needs_its_endpoint_and_secret(tmp_path):
    env = {**COMPLETE, "JOURNEY_HOME": str(tmp_path), "JOURNEY_CRM": "webhook"}
    with pytest.raises(SettingsError, match="JOURNEY_CRM_WEBHOOK_URL.*JOURNEY_CRM_WEBHOOK_SECRET"):
        load_settings(env)
    with pytest.raises(SettingsError, match="JOURNEY_HUBSPOT_TOKEN"):
        load_settings({**env, "JOURNEY_CRM": "hubspot"})
    with pytest.raises(SettingsError, match="one of local, webhook, hubspot"):
        load_settings({**env, "JOURNEY_CRM": "salesforce"})
    configured = load_settings(
        {**env, "JOURNEY_CRM_WEBHOOK_URL": "https://crm/x", "JOURNEY_CRM_WEBHOOK_SECRET": "s"}
    )
    assert configured.crm_kind == "webhook"


def test_the_production_dagster_instance_names_its_missing_variables(tmp_path, monkeypatch):
    from journey_pipeline.instance import DAGSTER_PG_VARIABLES, dagster_instance

    for name in DAGSTER_PG_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setenv("JOURNEY_PG_HOST", "db")
    settings = load_settings({**COMPLETE, "JOURNEY_HOME": str(tmp_path)})
    with pytest.raises(SettingsError) as error:
        dagster_instance(settings)
    message = str(error.value)
    assert "JOURNEY_PG_HOST" not in message
    for name in ("JOURNEY_PG_PORT", "JOURNEY_PG_USER", "JOURNEY_PG_PASSWORD", "JOURNEY_DAGSTER_DB"):
        assert name in message


def test_a_local_dagster_home_is_refused_by_the_production_profile(tmp_path, monkeypatch):
    from journey_pipeline.instance import REPO_ROOT, dagster_instance

    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO_ROOT / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    for name, value in {
        "JOURNEY_PG_HOST": "db",
        "JOURNEY_PG_PORT": "5432",
        "JOURNEY_PG_USER": "u",
        "JOURNEY_PG_PASSWORD": "",
        "JOURNEY_DAGSTER_DB": "dagster",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings({**COMPLETE, "JOURNEY_HOME": str(tmp_path)})
    with pytest.raises(SettingsError, match="keeps Dagster runs in SQLite.*DAGSTER_HOME"):
        dagster_instance(settings)
