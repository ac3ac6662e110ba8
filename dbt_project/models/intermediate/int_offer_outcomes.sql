-- One row per delivered offer (decision) with when, if ever, it was first opened and clicked.
-- An offer delivered twice (a redelivery) counts once, from its first delivery.
with offer_events as (

    select
        contact_id,
        coalesce(decision_id, event_id) as decision_key,
        event_id,
        event_type,
        occurred_at,
        action
    from {{ ref('stg_contact_events') }}
    where event_type in ('offer.delivered', 'offer.opened', 'offer.clicked')

),

deliveries as (

    select
        contact_id,
        decision_key,
        occurred_at as delivered_at,
        action,
        row_number() over (
            partition by contact_id, decision_key order by occurred_at, event_id
        ) as delivery_number
    from offer_events
    where event_type = 'offer.delivered'

),

responses as (

    select
        contact_id,
        decision_key,
        -- A click implies the offer was opened, even when the open pixel never fired.
        min(occurred_at) as opened_at,
        min(case when event_type = 'offer.clicked' then occurred_at end) as clicked_at
    from offer_events
    where event_type in ('offer.opened', 'offer.clicked')
    group by contact_id, decision_key

)

select
    deliveries.contact_id,
    deliveries.decision_key as decision_id,
    deliveries.action,
    deliveries.delivered_at,
    cast(deliveries.delivered_at as date) as delivered_date,
    responses.opened_at,
    responses.clicked_at
from deliveries
left join responses
    on responses.contact_id = deliveries.contact_id
    and responses.decision_key = deliveries.decision_key
where deliveries.delivery_number = 1
