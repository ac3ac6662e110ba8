-- One row per erased contact: the erasure ledger, plus any contact.deleted event that reached
-- raw.events before the ledger was written (erasure must never wait on bookkeeping).
with ledger as (

    select contact_id, erased_at
    from {{ source('ops', 'erasures') }}

),

deletion_events as (

    select contact_id, occurred_at as erased_at
    from {{ source('raw', 'events') }}
    where event_type = 'contact.deleted'

),

all_erasures as (

    select contact_id, erased_at from ledger
    union all
    select contact_id, erased_at from deletion_events

)

select contact_id, min(erased_at) as erased_at
from all_erasures
group by contact_id
