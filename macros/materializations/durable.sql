{#-
  materialized='durable': runs the model's flow durably. A re-run of the same dbt command
  resumes the model's interrupted run; completed nodes are skipped.

  Config:
    durable_wait:  'park' (default) parks a long wait (signal, sleep, schedule) and reports the
                   model as waiting, so dbt never hangs; 'block' waits it out.
    durable_park_after: seconds a wait may block before it parks (default 5).
    durable_vars:  {name} variables of the flow.
    durable_schedule: a cron expression; building the model registers a schedule that fires
                   the model's flow at each slot (run by `dbt-durable worker`).
    durable_schedule_tz, durable_catchup: its time zone (UTC) and catch-up policy (latest).
    durable_fresh: true to cancel an unfinished run whose flow changed and start over
                   (also: --vars '{durable_fresh: true}').
  The flow should build {{ this }} (for example its last step), so ref() to the model works.
-#}
{% materialization durable, adapter='durable' %}
  {%- set target_relation = this.incorporate(type='table') -%}
  {{ run_hooks(pre_hooks, inside_transaction=False) }}
  {%- set fresh = config.get('durable_fresh', false) or var('durable_fresh', false) -%}
  {%- set outcome = adapter.durable_run_model(
        sql, model.unique_id, model.original_file_path,
        config.get('durable_vars', {}), fresh, config.get('durable_wait', 'park'),
        config.get('durable_park_after', none)) -%}
  {%- if outcome.status not in ('completed', 'waiting') -%}
    {{ exceptions.raise_database_error("durable " ~ outcome.message ~ ". Run the same command again to resume from the failed node.") }}
  {%- endif -%}
  {%- if config.get('durable_schedule') -%}
    {% do adapter.durable_register_schedule(model.unique_id, config.get('durable_schedule'),
          config.get('durable_schedule_tz', 'UTC'), sql, config.get('durable_catchup', 'latest')) %}
  {%- endif -%}
  {% call noop_statement('main', outcome.message, code='DURABLE', rows_affected=outcome.executed) %}{% endcall %}
  {{ run_hooks(post_hooks, inside_transaction=False) }}
  {% do adapter.cache_added(target_relation) %}
  {{ return({'relations': [target_relation]}) }}
{% endmaterialization %}
