{#- A plain dbt model downstream of a durable one: ref() works as for any model. -#}
{{ config(materialized='table') }}
select ordered_at::date as day, count(*) as orders, sum(amount) as revenue
from {{ ref('orders_pipeline') }}
group by 1
