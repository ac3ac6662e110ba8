{#- The feature mart exported for Feast's duckdb offline store: one Parquet file under
    JOURNEY_HOME/features (contract.EXPORT_FILE), rewritten whole on every run. Warehouses
    without external files (PostgreSQL, Snowflake, BigQuery) get a view that Feast's SQL
    offline stores read directly. -#}
{{
    config(
        materialized=('external' if target.type == 'duckdb' else 'view'),
        location=env_var('JOURNEY_HOME', 'data') ~ '/features/contact_features_daily.parquet',
        format='parquet',
    )
}}

select *
from {{ ref('contact_features_daily') }}
