import warnings

import pytest

from journey_pipeline.settings import (
    DEV_PII_KEY,
    DevelopmentKeyWarning,
    SettingsError,
    load_settings,
)


def test_paths_follow_journey_home(tmp_path):
    s = load_settings({"JOURNEY_HOME": str(tmp_path / "h"), "JOURNEY_PII_KEY": "k"})
    assert s.warehouse_path == tmp_path / "h" / "warehouse.duckdb"
    assert s.crm_path.parent == s.landing_dir.parent == tmp_path / "h"
    assert s.mlflow_uri == f"sqlite:///{tmp_path / 'h' / 'mlflow.db'}"
    assert s.profile == "local" and s.pii_key == b"k" and not s.pii_key_is_default


def test_development_key_is_flagged_loudly(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = load_settings({"JOURNEY_HOME": str(tmp_path)})
    assert s.pii_key == DEV_PII_KEY.encode() and s.pii_key_is_default
    assert any(issubclass(w.category, DevelopmentKeyWarning) for w in caught)


def test_production_requires_a_pii_key(tmp_path):
    with pytest.raises(SettingsError, match="JOURNEY_PII_KEY"):
        load_settings({"JOURNEY_HOME": str(tmp_path), "JOURNEY_PROFILE": "production"})


def test_unknown_profile_is_a_clear_error(tmp_path):
    with pytest.raises(SettingsError, match="one of local, production"):
        load_settings({"JOURNEY_HOME": str(tmp_path), "JOURNEY_PROFILE": "staging"})
