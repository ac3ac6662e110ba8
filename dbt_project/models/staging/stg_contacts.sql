-- One row per known (not erased) contact. A contact exists from its contact.created event;
-- a contact first seen through contact.updated (a CRM record older than the change feed)
-- exists from that first change.
select
    contact_id,
    coalesce(
        min(case when event_type = 'contact.created' then occurred_at end),
        min(occurred_at)
    ) as created_at
from {{ ref('stg_contact_events') }}
where event_type in ('contact.created', 'contact.updated')
group by contact_id
