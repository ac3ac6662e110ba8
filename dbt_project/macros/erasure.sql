{#- Post-hook of the feature mart: an erased contact leaves every built day, not only the days
    this run rebuilt. Models using it declare `-- depends_on: {{ ref('stg_erasures') }}`. -#}
{% macro remove_erased_contacts() %}
    delete from {{ this }}
    where contact_id in (select contact_id from {{ ref('stg_erasures') }})
{% endmacro %}
