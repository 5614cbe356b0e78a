{#- Fan-out: four aggregations run in parallel (&), then one summary step uses their results. -#}
{{ config(materialized='durable') }}
{%- set orders = ref('orders_pipeline') -%}
{% call dbt_durable.flow() %}
(   ($$SELECT count(*) AS orders, sum(amount) AS revenue FROM {{ orders }}$$ |=> 'totals')
  & ($$SELECT category, sum(amount) AS revenue FROM {{ orders }} GROUP BY category ORDER BY 2 DESC LIMIT 1$$ |=> 'top')
  & ($$SELECT count(DISTINCT customer_id) AS customers FROM {{ orders }}$$ |=> 'buyers')
  & ($$SELECT max(ordered_at)::date AS latest_day FROM {{ orders }}$$ |=> 'latest') )
~> {{ dbt_durable.publish(this,
     'SELECT $totals.orders AS orders, $totals.revenue AS revenue, $top.category AS top_category,
             $buyers.customers AS customers, $latest.latest_day AS latest_day,
             round($totals.revenue / nullif($buyers.customers, 0), 2) AS revenue_per_customer') }}
{% endcall %}
