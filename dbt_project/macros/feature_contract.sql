{#- The mart's feature columns and their types, in order: a mirror of
    journey_pipeline.features.contract.FEATURES (tests/features/test_dbt_marts.py checks the
    built mart against it, so the two cannot drift apart unnoticed). -#}
{% macro feature_contract() %}
    {{ return({
        'spend_30d': 'DOUBLE',
        'spend_90d': 'DOUBLE',
        'orders_30d': 'INTEGER',
        'orders_90d': 'INTEGER',
        'avg_order_value_90d': 'DOUBLE',
        'product_views_7d': 'INTEGER',
        'cart_abandons_14d': 'INTEGER',
        'days_since_last_purchase': 'INTEGER',
        'lifecycle_stage': 'VARCHAR',
        'lifecycle_stage_rank': 'INTEGER',
        'days_in_stage': 'INTEGER',
        'tenure_days': 'INTEGER',
        'offers_received_30d': 'INTEGER',
        'offer_open_rate_30d': 'DOUBLE',
        'offer_click_rate_30d': 'DOUBLE',
        'last_action': 'VARCHAR',
        'days_since_last_action': 'INTEGER',
        'acquisition_channel': 'VARCHAR',
        'acquisition_channel_rank': 'INTEGER',
        'loyalty_member': 'INTEGER',
    }) }}
{% endmacro %}
