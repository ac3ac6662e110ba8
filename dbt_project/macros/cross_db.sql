{#- Cross-database helpers the feature models use besides dbt's own (dbt.dateadd, dbt.datediff,
    dbt.generate_series, dbt.type_*). Each dispatches on the adapter, so the models run unchanged
    on DuckDB, PostgreSQL, Snowflake and BigQuery. -#}

{% macro json_text(column, key) %}
    {{ return(adapter.dispatch('json_text', 'journey_pipeline')(column, key)) }}
{% endmacro %}

{#- DuckDB and PostgreSQL both read a JSON member as text with ->>. -#}
{% macro default__json_text(column, key) -%}
    ({{ column }} ->> '{{ key }}')
{%- endmacro %}

{% macro snowflake__json_text(column, key) -%}
    ({{ column }}:{{ key }}::string)
{%- endmacro %}

{% macro bigquery__json_text(column, key) -%}
    json_value({{ column }}, '$.{{ key }}')
{%- endmacro %}


{#- Column types of the feature contract (contract.FEATURES uses DuckDB's names). dbt's
    type_float() is a 4-byte FLOAT on DuckDB, so DOUBLE is mapped explicitly. -#}
{% macro feature_type(contract_type) %}
    {{ return(adapter.dispatch('feature_type', 'journey_pipeline')(contract_type)) }}
{% endmacro %}

{% macro default__feature_type(contract_type) -%}
    {%- if contract_type == 'DOUBLE' -%}{{ dbt.type_float() }}
    {%- elif contract_type == 'INTEGER' -%}{{ dbt.type_int() }}
    {%- else -%}{{ dbt.type_string() }}
    {%- endif -%}
{%- endmacro %}

{% macro duckdb__feature_type(contract_type) -%}
    {%- if contract_type == 'DOUBLE' -%}double
    {%- elif contract_type == 'INTEGER' -%}integer
    {%- else -%}varchar
    {%- endif -%}
{%- endmacro %}

{% macro postgres__feature_type(contract_type) -%}
    {%- if contract_type == 'DOUBLE' -%}double precision
    {%- elif contract_type == 'INTEGER' -%}integer
    {%- else -%}varchar
    {%- endif -%}
{%- endmacro %}


{#- A date literal from an ISO string, e.g. date_literal('2026-01-05'). -#}
{% macro date_literal(iso_date) -%}
    cast('{{ iso_date }}' as date)
{%- endmacro %}


{#- dbt.dateadd returns a timestamp on some adapters (PostgreSQL); feature dates stay dates. -#}
{% macro add_days(days, date_expression) -%}
    cast({{ dbt.dateadd('day', days, date_expression) }} as date)
{%- endmacro %}
