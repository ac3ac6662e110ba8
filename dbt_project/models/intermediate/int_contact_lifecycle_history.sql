-- Lifecycle history: one row per stretch a contact spent in a stage, [entered_at, left_at).
-- Repeated updates with the same stage (a status change, a re-sent record) do not restart
-- the stretch; left_at is NULL for the current stage.
with stage_events as (

    select
        contact_id,
        event_id,
        occurred_at,
        lifecycle_stage,
        lag(lifecycle_stage) over (
            partition by contact_id order by occurred_at, event_id
        ) as previous_stage
    from {{ ref('stg_contact_events') }}
    where event_type in ('contact.created', 'contact.updated')
        and lifecycle_stage is not null

),

stage_entries as (

    select contact_id, event_id, occurred_at as entered_at, lifecycle_stage
    from stage_events
    where previous_stage is null or previous_stage <> lifecycle_stage

)

select
    contact_id,
    lifecycle_stage,
    entered_at,
    lead(entered_at) over (partition by contact_id order by entered_at, event_id) as left_at
from stage_entries
