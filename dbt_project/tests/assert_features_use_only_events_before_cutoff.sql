{{ config(meta={'dagster': {'ref': {'name': 'contact_features_daily'}}}) }}
{#- Point-in-time guard: recomputes, independently of the mart's windowed arithmetic, what each
    feature row may know from events strictly before its cutoff (feature_ts), and returns every
    row that knows more than that:
      - a last purchase or last offer dated on or after its feature date;
      - a last purchase later than the latest payment before the cutoff;
      - more 90-day orders or spend than the payments in [cutoff - 90 days, cutoff);
      - a contact that did not exist yet, or a stage entered at or after the cutoff. -#}
{%- set ts = dbt.type_timestamp() -%}

with features as (

    select
        contact_id,
        feature_date,
        feature_ts,
        orders_90d,
        spend_90d,
        tenure_days,
        days_in_stage,
        {{ journey_pipeline.add_days('-days_since_last_purchase', 'feature_date') }}
            as implied_last_purchase_date,
        {{ journey_pipeline.add_days('-days_since_last_action', 'feature_date') }}
            as implied_last_offer_date
    from {{ ref('contact_features_daily') }}

),

contributing_events as (

    select contact_id, event_type, occurred_at, amount
    from {{ ref('stg_contact_events') }}
    where event_type = 'payment.succeeded'

),

recomputed as (

    select
        features.contact_id,
        features.feature_date,
        max(events.occurred_at) as last_purchase_at,
        sum(case when events.occurred_at >= {{ dbt.dateadd('day', -90, 'features.feature_ts') }}
            then 1 else 0 end) as orders_90d,
        sum(case when events.occurred_at >= {{ dbt.dateadd('day', -90, 'features.feature_ts') }}
            then coalesce(events.amount, 0) else 0 end) as spend_90d
    from features
    inner join contributing_events as events
        on events.contact_id = features.contact_id
        and events.occurred_at < features.feature_ts
    group by features.contact_id, features.feature_date

)

-- One-sided on purpose: a row that knows less than the events allow (a late-arriving event on
-- a day that was not rebuilt) is stale, not leaking, and is left to the next backfill.
select features.*
from features
left join recomputed
    on recomputed.contact_id = features.contact_id
    and recomputed.feature_date = features.feature_date
where features.implied_last_purchase_date >= features.feature_date
    or features.implied_last_offer_date >= features.feature_date
    or features.tenure_days < 1
    or features.days_in_stage < 1
    or (
        features.implied_last_purchase_date is not null
        and (
            recomputed.last_purchase_at is null
            or features.implied_last_purchase_date > cast(recomputed.last_purchase_at as date)
        )
    )
    or features.orders_90d > coalesce(recomputed.orders_90d, 0)
    or features.spend_90d > coalesce(recomputed.spend_90d, 0) + 0.000001
