-- Contact x activity day: what each contact did on each UTC day with any activity. The mart
-- turns these into trailing windows; a day is counted for feature date D only if it is before
-- D, so every event in it occurred before D 00:00 UTC.
with events as (

    select * from {{ ref('stg_contact_events') }}
    where event_type in (
        'payment.succeeded', 'product.viewed', 'cart.abandoned', 'offer.delivered'
    )

),

daily as (

    select
        contact_id,
        event_date as activity_date,
        sum(case when event_type = 'payment.succeeded' then 1 else 0 end) as orders,
        sum(case when event_type = 'payment.succeeded' then coalesce(amount, 0) else 0 end)
            as spend,
        sum(case when event_type = 'product.viewed' then 1 else 0 end) as product_views,
        sum(case when event_type = 'cart.abandoned' then 1 else 0 end) as cart_abandons,
        sum(case when event_type = 'offer.delivered' then 1 else 0 end) as offers_delivered
    from events
    group by contact_id, event_date

),

deliveries_ranked as (

    select
        contact_id,
        event_date,
        action,
        row_number() over (
            partition by contact_id, event_date
            order by occurred_at desc, event_id desc
        ) as recency_rank
    from events
    where event_type = 'offer.delivered'

)

select
    daily.contact_id,
    daily.activity_date,
    daily.orders,
    daily.spend,
    daily.product_views,
    daily.cart_abandons,
    daily.offers_delivered,
    -- The action of the day's latest delivered offer: "last action" as of the next day.
    deliveries_ranked.action as last_action_of_day
from daily
left join deliveries_ranked
    on deliveries_ranked.contact_id = daily.contact_id
    and deliveries_ranked.event_date = daily.activity_date
    and deliveries_ranked.recency_rank = 1
