-- CRM contact properties over time: one row per contact.* event that carries any of them,
-- valid in [valid_from, valid_to); valid_to is NULL for the latest. A property missing from an
-- event keeps its previous value (a partial update does not erase it).
with property_events as (

    select
        contact_id,
        event_id,
        occurred_at,
        acquisition_channel,
        loyalty_member
    from {{ ref('stg_contact_events') }}
    where event_type in ('contact.created', 'contact.updated')
        and (acquisition_channel is not null or loyalty_member is not null)

),

carried as (

    select
        contact_id,
        event_id,
        occurred_at,
        -- Last non-null value so far (count of non-nulls as a group key: portable, no IGNORE NULLS).
        max(acquisition_channel) over (
            partition by contact_id, channel_group) as acquisition_channel,
        max(loyalty_member) over (partition by contact_id, loyalty_group) as loyalty_member
    from (
        select
            *,
            count(acquisition_channel) over (
                partition by contact_id order by occurred_at, event_id
                rows between unbounded preceding and current row) as channel_group,
            count(loyalty_member) over (
                partition by contact_id order by occurred_at, event_id
                rows between unbounded preceding and current row) as loyalty_group
        from property_events
    ) as grouped

)

select
    contact_id,
    acquisition_channel,
    loyalty_member,
    occurred_at as valid_from,
    lead(occurred_at) over (partition by contact_id order by occurred_at, event_id) as valid_to
from carried
