"""Feast definitions read by `feast apply` (the feature repository's entry point).

The objects come from journey_pipeline.features.feature_store.feature_definitions, the one
place that defines them; the Dagster asset `feast_registry` applies the same objects. The
Parquet source path follows JOURNEY_HOME, like feature_store.yaml.
"""

import warnings

from journey_pipeline.features.feature_store import export_path, feature_definitions
from journey_pipeline.settings import DevelopmentKeyWarning, load_settings

with warnings.catch_warnings():
    # Feature definitions never touch PII; the key warning is not theirs to raise.
    warnings.simplefilter("ignore", DevelopmentKeyWarning)
    _settings = load_settings()

_definitions = feature_definitions(export_path(_settings))

contact = _definitions.entity
contact_features_source = _definitions.source
contact_features = _definitions.feature_view
next_best_action = _definitions.feature_service
