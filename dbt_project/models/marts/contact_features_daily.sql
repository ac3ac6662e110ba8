{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='feature_date',
        on_schema_change='fail',
        pre_hook="{{ journey_pipeline.clear_feature_window() }}",
        post_hook="{{ journey_pipeline.remove_erased_contacts() }}",
    )
}}
-- depends_on: {{ ref('stg_erasures') }}

{# Contact x feature date. The row for day D uses only events with occurred_at < D 00:00 UTC
    (feature_ts, its cutoff): every window below ends at the day before D. Windows are trailing
    calendar days: "30d" is the days D-30 .. D-1. #}
{%- set window = journey_pipeline.feature_window(lookback_days=90) -%}
{%- set start = journey_pipeline.date_literal(window.start) -%}
{%- set end = journey_pipeline.date_literal(window.end) -%}
{%- set lookback_start = journey_pipeline.date_literal(window.lookback_start) -%}
{%- set spine_days = (window.end - window.lookback_start).days + 1 -%}
{#- An integer surrogate partitions the windows: sorting by it is cheaper than by the id text. -#}
{%- set by_day = "partition by grid.contact_key order by grid.day" -%}
{%- set stages = var('lifecycle_stages') -%}
{%- set channels = var('acquisition_channels') -%}
{%- set ts = dbt.type_timestamp() %}

with contacts as (

    select
        contact_id,
        row_number() over (order by contact_id) as contact_key,
        created_at,
        cast(created_at as date) as created_date
    from {{ ref('stg_contacts') }}
    where created_at < cast({{ journey_pipeline.add_days(1, end) }} as {{ ts }})

),

-- Read once: the windows, the carried-in history and the last-offer lookup all use it.
activity as (

    select *
    from {{ ref('int_contact_daily') }}
    where activity_date < {{ end }}

),

daily as (

    select * from activity where activity_date >= {{ lookback_start }}

),

-- Older activity matters only for "last ever" features; carried into the lookback grid.
history_before_lookback as (

    select
        contact_id,
        max(case when orders > 0 then activity_date end) as last_purchase_date,
        max(case when offers_delivered > 0 then activity_date end) as last_offer_date
    from activity
    where activity_date < {{ lookback_start }}
    group by contact_id

),

first_activity as (

    select contact_id, min(activity_date) as first_activity_date
    from daily
    group by contact_id

),

day_spine as (

    select {{ journey_pipeline.add_days('generated_number - 1', lookback_start) }} as day
    from ({{ dbt.generate_series(spine_days) }}) as numbers

),

-- One row per contact and day from its first relevant day: dense, so that "N preceding rows"
-- below is exactly "the N previous days".
grid as (

    select contacts.contact_id, contacts.contact_key, day_spine.day
    from contacts
    left join first_activity on first_activity.contact_id = contacts.contact_id
    inner join day_spine
        on day_spine.day >= case
            when first_activity.first_activity_date < contacts.created_date
                then first_activity.first_activity_date
            else contacts.created_date
        end
    {%- if window.empty %}
    where 1 = 0
    {%- endif %}

),

activity_windows as (

    select
        grid.contact_id,
        grid.day as feature_date,
        sum(daily.spend) over ({{ by_day }} rows between 30 preceding and 1 preceding)
            as spend_30d,
        sum(daily.spend) over ({{ by_day }} rows between 90 preceding and 1 preceding)
            as spend_90d,
        sum(daily.orders) over ({{ by_day }} rows between 30 preceding and 1 preceding)
            as orders_30d,
        sum(daily.orders) over ({{ by_day }} rows between 90 preceding and 1 preceding)
            as orders_90d,
        sum(daily.product_views) over ({{ by_day }} rows between 7 preceding and 1 preceding)
            as product_views_7d,
        sum(daily.cart_abandons) over ({{ by_day }} rows between 14 preceding and 1 preceding)
            as cart_abandons_14d,
        max(case when daily.orders > 0 then daily.activity_date end)
            over ({{ by_day }} rows between unbounded preceding and 1 preceding)
            as last_purchase_date,
        max(case when daily.offers_delivered > 0 then daily.activity_date end)
            over ({{ by_day }} rows between unbounded preceding and 1 preceding)
            as last_offer_date
    from grid
    left join daily
        on daily.contact_id = grid.contact_id
        and daily.activity_date = grid.day

),

offer_offsets as (

    select generated_number as days_after_delivery
    from ({{ dbt.generate_series(30) }}) as numbers

),

-- Each delivered offer counts for the 30 feature dates after its delivery day; its open and
-- click count only if they happened before that date's cutoff.
offer_windows as (

    select
        offers.contact_id,
        {{ journey_pipeline.add_days('offer_offsets.days_after_delivery', 'offers.delivered_date') }}
            as feature_date,
        count(*) as offers_received,
        sum(case when offers.opened_at < cast(
                {{ journey_pipeline.add_days('offer_offsets.days_after_delivery', 'offers.delivered_date') }}
                as {{ ts }}) then 1 else 0 end) as offers_opened,
        sum(case when offers.clicked_at < cast(
                {{ journey_pipeline.add_days('offer_offsets.days_after_delivery', 'offers.delivered_date') }}
                as {{ ts }}) then 1 else 0 end) as offers_clicked
    from {{ ref('int_offer_outcomes') }} as offers
    cross join offer_offsets
    where offers.delivered_date >= {{ journey_pipeline.add_days(-30, start) }}
        and offers.delivered_date < {{ end }}
    group by 1, 2

),

features as (

    select
        activity_windows.contact_id,
        activity_windows.feature_date,
        cast(activity_windows.feature_date as {{ ts }}) as feature_ts,
        coalesce(activity_windows.spend_30d, 0) as spend_30d,
        coalesce(activity_windows.spend_90d, 0) as spend_90d,
        coalesce(activity_windows.orders_30d, 0) as orders_30d,
        coalesce(activity_windows.orders_90d, 0) as orders_90d,
        case when activity_windows.orders_90d > 0
            then activity_windows.spend_90d / activity_windows.orders_90d end as avg_order_value_90d,
        coalesce(activity_windows.product_views_7d, 0) as product_views_7d,
        coalesce(activity_windows.cart_abandons_14d, 0) as cart_abandons_14d,
        {{ dbt.datediff(
            'coalesce(activity_windows.last_purchase_date, history_before_lookback.last_purchase_date)',
            'activity_windows.feature_date', 'day') }} as days_since_last_purchase,
        stage.lifecycle_stage,
        case stage.lifecycle_stage
            {%- for stage_name in stages %}
            when '{{ stage_name }}' then {{ loop.index0 }}
            {%- endfor %}
        end as lifecycle_stage_rank,
        {{ dbt.datediff('cast(stage.entered_at as date)', 'activity_windows.feature_date', 'day') }}
            as days_in_stage,
        {{ dbt.datediff('contacts.created_date', 'activity_windows.feature_date', 'day') }}
            as tenure_days,
        coalesce(offer_windows.offers_received, 0) as offers_received_30d,
        case when offer_windows.offers_received > 0
            then 1.0 * offer_windows.offers_opened / offer_windows.offers_received
        end as offer_open_rate_30d,
        case when offer_windows.offers_received > 0
            then 1.0 * offer_windows.offers_clicked / offer_windows.offers_received
        end as offer_click_rate_30d,
        last_offer_day.last_action_of_day as last_action,
        {{ dbt.datediff(
            'coalesce(activity_windows.last_offer_date, history_before_lookback.last_offer_date)',
            'activity_windows.feature_date', 'day') }} as days_since_last_action,
        properties.acquisition_channel,
        case properties.acquisition_channel
            {%- for channel in channels %}
            when '{{ channel }}' then {{ loop.index0 }}
            {%- endfor %}
        end as acquisition_channel_rank,
        properties.loyalty_member
    from activity_windows
    inner join contacts
        on contacts.contact_id = activity_windows.contact_id
        and contacts.created_at < cast(activity_windows.feature_date as {{ ts }})
    left join history_before_lookback
        on history_before_lookback.contact_id = activity_windows.contact_id
    left join {{ ref('int_contact_lifecycle_history') }} as stage
        on stage.contact_id = activity_windows.contact_id
        and stage.entered_at < cast(activity_windows.feature_date as {{ ts }})
        and (stage.left_at is null or stage.left_at >= cast(activity_windows.feature_date as {{ ts }}))
    left join {{ ref('int_contact_properties') }} as properties
        on properties.contact_id = activity_windows.contact_id
        and properties.valid_from < cast(activity_windows.feature_date as {{ ts }})
        and (properties.valid_to is null
            or properties.valid_to >= cast(activity_windows.feature_date as {{ ts }}))
    left join offer_windows
        on offer_windows.contact_id = activity_windows.contact_id
        and offer_windows.feature_date = activity_windows.feature_date
    left join activity as last_offer_day
        on last_offer_day.contact_id = activity_windows.contact_id
        and last_offer_day.activity_date = coalesce(
            activity_windows.last_offer_date, history_before_lookback.last_offer_date)
    where activity_windows.feature_date >= {{ start }} and activity_windows.feature_date <= {{ end }}

)

select
    contact_id,
    feature_date,
    feature_ts,
    cast('{{ run_started_at.strftime("%Y-%m-%d %H:%M:%S") }}' as {{ ts }}) as created_ts,
    {%- for name, contract_type in journey_pipeline.feature_contract().items() %}
    cast({{ name }} as {{ journey_pipeline.feature_type(contract_type) }}) as {{ name }}
    {%- if not loop.last %},{% endif %}
    {%- endfor %}
from features
