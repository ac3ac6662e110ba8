{#- Fails on every row where the column is NULL but the condition is false, or is set while
    the condition is true: "NULL means undefined" made checkable. -#}
{% test null_exactly_when(model, column_name, condition) %}

select {{ column_name }}
from {{ model }}
where ({{ column_name }} is null and not ({{ condition }}))
    or ({{ column_name }} is not null and ({{ condition }}))

{% endtest %}
