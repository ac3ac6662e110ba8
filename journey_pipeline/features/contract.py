"""The feature contract between dbt (offline), Feast (online) and the decision model.

Grain: one row per (contact_id, feature_date). The row for day D is computed only from events
with ``occurred_at < D 00:00 UTC`` (its cutoff, ``feature_ts``): a decision taken at any time
during D is served, online and in training, exactly the values of that row.
"""

ENTITY_KEY = "contact_id"
TIMESTAMP_FIELD = "feature_ts"  # = feature_date 00:00:00 UTC, the cutoff
MART = "contact_features_daily"
EXPORT_FILE = "contact_features_daily.parquet"  # under Settings.feature_exports_dir
FEATURE_VIEW = "contact_features"
FEATURE_SERVICE = "next_best_action"

LIFECYCLE_STAGES = ["subscriber", "lead", "mql", "sql", "opportunity", "customer", "churned"]
# CRM contact property ``acquisition_channel``; its rank is the index here (NULL if unlisted).
ACQUISITION_CHANNELS = ["paid_search", "organic", "coupon_site", "referral"]

# name -> dbt/DuckDB type. NULL means "undefined" (never purchased, no offer received yet);
# LightGBM treats it as missing. Counts and sums over empty windows are 0, never NULL.
FEATURES: dict[str, str] = {
    "spend_30d": "DOUBLE",
    "spend_90d": "DOUBLE",
    "orders_30d": "INTEGER",
    "orders_90d": "INTEGER",
    "avg_order_value_90d": "DOUBLE",  # NULL without orders in 90d
    "product_views_7d": "INTEGER",
    "cart_abandons_14d": "INTEGER",
    "days_since_last_purchase": "INTEGER",  # NULL if never purchased
    "lifecycle_stage": "VARCHAR",
    "lifecycle_stage_rank": "INTEGER",  # index in LIFECYCLE_STAGES
    "days_in_stage": "INTEGER",
    "tenure_days": "INTEGER",
    "offers_received_30d": "INTEGER",
    "offer_open_rate_30d": "DOUBLE",  # NULL if no offer delivered in 30d
    "offer_click_rate_30d": "DOUBLE",  # NULL if no offer delivered in 30d
    "last_action": "VARCHAR",  # NULL if never offered
    "days_since_last_action": "INTEGER",  # NULL if never offered
    # CRM contact properties, as of the cutoff (NULL until the CRM has sent them).
    "acquisition_channel": "VARCHAR",
    "acquisition_channel_rank": "INTEGER",  # index in ACQUISITION_CHANNELS
    "loyalty_member": "INTEGER",  # 1 member, 0 not
}

# The numeric features the reward model consumes (strings are carried as their rank/ignored).
MODEL_FEATURES: list[str] = [name for name, typ in FEATURES.items() if typ in ("DOUBLE", "INTEGER")]
