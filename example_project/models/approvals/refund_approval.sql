{#- Human in the loop: large orders wait for an approval signal. `dbt build` does not hang:
    the model parks the run as waiting. Approve with
      dbt run-operation durable_signal --args '{select: refund_approval, name: approve_refunds, payload: {approved: true, by: alice}}'
    then run the model again (or let a worker continue it). -#}
{{ config(materialized='durable') }}
{% call dbt_durable.flow() %}
$$CREATE TABLE IF NOT EXISTS {{ this }} (order_id integer PRIMARY KEY, amount numeric, status text, decided_by text)$$
~> $$INSERT INTO {{ this }} SELECT order_id, amount, 'pending', NULL FROM {{ ref('orders_pipeline') }}
     WHERE amount > 490 ON CONFLICT (order_id) DO NOTHING$$
~> ('SELECT count(*) AS n, coalesce(sum(amount), 0) AS total FROM {{ this }} WHERE status = ''pending''' |=> 'pending')
~> (wait_for_signal('approve_refunds', 604800) |=> 'decision')
~> ( 'SELECT NOT $decision.timed_out AND coalesce(($decision.data ->> ''approved'')::boolean, false)'
     ?> $$UPDATE {{ this }} SET status = 'refunded', decided_by = $decision.data ->> 'by' WHERE status = 'pending'$$
     !> $$UPDATE {{ this }} SET status = 'rejected' WHERE status = 'pending'$$ )
{% endcall %}
