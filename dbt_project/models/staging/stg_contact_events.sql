-- Typed, normalised CRM events of contacts that are not erased. An erased contact's events
-- stay in raw.events for audit, but nothing downstream of staging ever sees them.
with events as (

    select * from {{ source('raw', 'events') }}

),

erasures as (

    select contact_id from {{ ref('stg_erasures') }}

)

select
    events.event_id,
    events.occurred_at,
    cast(events.event_date as date) as event_date,
    events.event_type,
    events.source,
    events.contact_id,
    lower(trim(events.lifecycle_stage)) as lifecycle_stage,
    lower(trim(events.status)) as status,
    events.amount,
    events.currency,
    events.order_id,
    events.decision_id,
    events.product_id,
    -- offer.* events carry the chosen action only in the payload.
    {{ json_text('events.payload', 'action') }} as action,
    -- CRM contact properties, on contact.* events (absent from other events).
    {{ json_text('events.payload', 'acquisition_channel') }} as acquisition_channel,
    case lower({{ json_text('events.payload', 'loyalty_member') }})
        when 'true' then 1 when 'false' then 0
    end as loyalty_member
from events
where not exists (
    select 1 from erasures where erasures.contact_id = events.contact_id
)
