{#- Ingest -> stage (in checkpointed batches) -> dedupe -> publish {{ this }}.
    Kill it at any moment and run the same dbt command again: finished batches are skipped. -#}
{{ config(materialized='durable') }}
{%- set raw = target.schema ~ '_raw.raw_orders' -%}
{%- set staged = this.schema ~ '.stg_orders' -%}
{% call dbt_durable.flow() %}
'CREATE SCHEMA IF NOT EXISTS {{ target.schema }}_raw' with (retries=3, backoff='200ms')
~> {{ create_raw_orders(raw, var('raw_orders')) }}
~> $$CREATE TABLE IF NOT EXISTS {{ staged }} (
       order_id integer PRIMARY KEY, customer_id integer, category text, amount numeric,
       ordered_at timestamp, source_order_id integer)$$
~> {{ dbt_durable.batched(raw, 'order_id', var('batch_size'),
        'INSERT INTO ' ~ staged ~ ' SELECT * FROM ' ~ raw ~ ' WHERE __batch__ ON CONFLICT (order_id) DO NOTHING',
        name='ingest') }}
~> {{ dbt_durable.publish(this,
        'SELECT DISTINCT ON (source_order_id) source_order_id AS order_id, customer_id, category, amount, ordered_at
           FROM ' ~ staged ~ ' ORDER BY source_order_id, order_id') }}
~> ('SELECT count(*) AS orders, sum(amount) AS revenue FROM {{ this }}' |=> 'published')
{% endcall %}
