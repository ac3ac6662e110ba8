{#- The feature dates one run of contact_features_daily builds (inclusive), as a dict:
      start, end            first and last feature date (datetime.date)
      lookback_start        first activity day the longest window (90 days) needs
      empty                 true when there is nothing to build (no events, or start > end)

    vars start_date / end_date (ISO dates) give the window explicitly: a Dagster partition
    window or a backfill; without a var, the environment variable JOURNEY_FEATURE_START_DATE /
    JOURNEY_FEATURE_END_DATE does (Dagster passes the window this way, so the command line and
    dbt's partial parse stay the same from day to day). Without them the run continues after the latest built day (or from
    the day after the first event on a first build) up to the day after the newest event, the
    first day whose cutoff has seen every event. -#}
{% macro feature_window(lookback_days=90) %}
    {%- set dt = modules.datetime -%}
    {%- set placeholder = dt.date(1970, 1, 1) -%}
    {%- if not execute -%}
        {{ return({'start': placeholder, 'end': placeholder,
                   'lookback_start': placeholder, 'empty': true}) }}
    {%- endif -%}

    {%- set start_var = var('start_date', none) or env_var('JOURNEY_FEATURE_START_DATE', '') -%}
    {%- set end_var = var('end_date', none) or env_var('JOURNEY_FEATURE_END_DATE', '') -%}

    {%- set bounds_sql -%}
        select min(event_date), max(event_date) from {{ source('raw', 'events') }}
    {%- endset -%}
    {%- set bounds = run_query(bounds_sql).rows[0] -%}
    {%- set first_event = journey_pipeline.as_date(bounds[0]) -%}
    {%- set newest_event = journey_pipeline.as_date(bounds[1]) -%}
    {%- set one_day = dt.timedelta(days=1) -%}

    {%- if start_var -%}
        {%- set start = journey_pipeline.parse_window_date(start_var, 'start_date') -%}
    {%- elif is_incremental() -%}
        {%- set built_sql -%}select max(feature_date) from {{ this }}{%- endset -%}
        {%- set latest_built = journey_pipeline.as_date(run_query(built_sql).rows[0][0]) -%}
        {%- if latest_built is not none -%}
            {%- set start = latest_built + one_day -%}
        {%- elif first_event is not none -%}
            {%- set start = first_event + one_day -%}
        {%- else -%}
            {%- set start = none -%}
        {%- endif -%}
    {%- elif first_event is not none -%}
        {%- set start = first_event + one_day -%}
    {%- else -%}
        {%- set start = none -%}
    {%- endif -%}

    {%- if end_var -%}
        {%- set end = journey_pipeline.parse_window_date(end_var, 'end_date') -%}
    {%- elif newest_event is not none -%}
        {%- set end = newest_event + one_day -%}
    {%- else -%}
        {%- set end = start -%}
    {%- endif -%}

    {%- if start is none or end is none or start > end -%}
        {{ return({'start': placeholder, 'end': placeholder,
                   'lookback_start': placeholder, 'empty': true}) }}
    {%- endif -%}
    {{ return({'start': start, 'end': end,
               'lookback_start': start - dt.timedelta(days=lookback_days), 'empty': false}) }}
{% endmacro %}


{#- A value read back from the warehouse as a date (adapters return date, datetime or str). -#}
{% macro as_date(value) %}
    {%- if value is none -%}{{ return(none) }}{%- endif -%}
    {{ return(modules.datetime.date.fromisoformat((value | string)[:10])) }}
{% endmacro %}


{% macro parse_window_date(value, name) %}
    {%- set text = value | string -%}
    {%- if not modules.re.match('^[0-9]{4}-[0-9]{2}-[0-9]{2}$', text) -%}
        {{ exceptions.raise_compiler_error(
            "var " ~ name ~ "=" ~ text ~ " is not an ISO date (YYYY-MM-DD)") }}
    {%- endif -%}
    {{ return(modules.datetime.date.fromisoformat(text)) }}
{% endmacro %}


{#- Pre-hook of the incremental mart: clear the window's days before they are rebuilt, so a
    day that now has fewer rows (or none) never keeps stale ones. -#}
{% macro clear_feature_window() %}
    {%- if execute and is_incremental() -%}
        {%- set window = journey_pipeline.feature_window() -%}
        {%- if not window.empty -%}
            delete from {{ this }}
            where feature_date between {{ journey_pipeline.date_literal(window.start) }}
                and {{ journey_pipeline.date_literal(window.end) }}
        {%- endif -%}
    {%- endif -%}
{% endmacro %}
