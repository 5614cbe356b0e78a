{#-
  materialized='durable': runs the model's flow durably. A re-run of the same dbt command
  resumes the model's interrupted run; completed nodes are skipped. The model's runs are keyed
  by the relation it builds, so every target has its own (docs/dbt.md).

  Config:
    durable_mode:  'shadow' (default): {{ this }} in the flow names a shadow relation, swapped
                   in (dbt's rename pattern, as for `table`) when the run completes; downstream
                   models only ever see complete versions. 'incremental': the flow runs in place
                   on {{ this }}; dbt_durable.is_incremental() tells whether it exists.
    durable_key:   a logical run identity, e.g. var('ds'): a completed key is not redone, a new
                   key is a new run.
    durable_wait:  'park' (default) parks a long wait (signal, sleep, schedule) and reports the
                   model with a warning, so dbt never hangs; 'block' waits it out.
    durable_park_after: seconds a wait may block before it parks (default 5).
    durable_vars:  {name} variables of the flow.
    durable_schedule: a cron expression; building the model registers a schedule that fires
                   the model's flow at each slot (run by `dbt-durable worker`). Removing the
                   config (or the model) removes the schedule at the next build.
    durable_schedule_tz, durable_catchup: its time zone (UTC) and catch-up policy (latest).
    durable_fresh: true to cancel an unfinished run and start over (also --full-refresh, or
                   --vars '{durable_fresh: true}').
  --empty runs no flow and changes nothing.
-#}
{% materialization durable, adapter='durable' %}
  {%- set target_relation = this.incorporate(type='table') -%}
  {%- set mode = config.get('durable_mode', 'shadow') -%}

  {%- if flags.EMPTY -%}
    {% call noop_statement('main', 'DURABLE skipped: --empty runs no flow', code='DURABLE', rows_affected=0) %}{% endcall %}
    {{ return({'relations': []}) }}
  {%- endif -%}

  {%- set shadow_relation = none -%}
  {%- if mode == 'shadow' -%}
    {%- set shadow_relation = make_intermediate_relation(target_relation, suffix='__dbt_durable') -%}
  {%- endif -%}
  {{ run_hooks(pre_hooks, inside_transaction=False) }}
  {%- set spec = {
        'flow_text': sql,
        'origin': model.original_file_path,
        'source': model.raw_code,
        'relation': this | string,
        'target': [this.schema, this.identifier],
        'shadow_relation': (shadow_relation | string) if shadow_relation is not none else none,
        'shadow': [shadow_relation.schema, shadow_relation.identifier] if shadow_relation is not none else none,
        'key': config.get('durable_key'),
        'vars': config.get('durable_vars', {}),
        'fresh': config.get('durable_fresh', false) or var('durable_fresh', false),
        'full_refresh': should_full_refresh(),
        'mode': mode,
        'wait': config.get('durable_wait', 'park'),
        'park_after': config.get('durable_park_after', none),
      } -%}
  {%- set outcome = adapter.durable_run_model(spec) -%}
  {%- if outcome.status not in ('completed', 'waiting') -%}
    {{ exceptions.raise_database_error("durable " ~ outcome.message) }}
  {%- endif -%}

  {%- if outcome.publish -%}
    {{ dbt_durable.durable_swap(target_relation, shadow_relation.incorporate(type=outcome.shadow_type), outcome.target_type) }}
  {%- endif -%}

  {{ dbt_durable.durable_schedules(outcome) }}

  {%- if outcome.status == 'waiting' -%}
    {% do exceptions.warn("[WARNING] " ~ model.original_file_path ~ " is parked, not complete: " ~ outcome.message) %}
  {%- endif -%}
  {% call noop_statement('main', outcome.message, code='DURABLE', rows_affected=outcome.executed) %}{% endcall %}
  {{ run_hooks(post_hooks, inside_transaction=False) }}
  {%- set final_type = outcome.shadow_type if outcome.publish else outcome.target_type -%}
  {%- if final_type -%}
    {%- set built = target_relation.incorporate(type=final_type) -%}
    {% do adapter.cache_added(built) %}
    {{ return({'relations': [built]}) }}
  {%- endif -%}
  {{ return({'relations': []}) }}
{% endmaterialization %}

{#- Swap the completed shadow in: dbt's table materialization pattern, in one transaction. -#}
{#- (dbt's relation cache does not know what the flow built on its own connections, so the
    relation types come from the run's outcome.) -#}
{% macro durable_swap(target_relation, built, existing_type) %}
  {%- set existing = target_relation.incorporate(type=existing_type) if existing_type else none -%}
  {%- set final = target_relation.incorporate(type=built.type) -%}
  {%- set backup = make_backup_relation(final, existing.type if existing is not none else built.type) -%}
  {{ drop_relation_if_exists(backup) }}
  {%- if existing is not none -%}
    {{ adapter.rename_relation(existing, backup) }}
  {%- endif -%}
  {{ adapter.rename_relation(built, final) }}
  {{ adapter.commit() }}
  {%- if existing is not none -%}
    {{ drop_relation_if_exists(backup) }}
  {%- endif -%}
{% endmacro %}

{#- Register the model's schedule (named by its relation) and remove the schedules of this
    project and target that no model declares any more. -#}
{% macro durable_schedules(outcome) %}
  {%- if config.get('durable_schedule') -%}
    {% do adapter.durable_register_schedule(this | string, config.get('durable_schedule'),
          config.get('durable_schedule_tz', 'UTC'), sql, config.get('durable_catchup', 'latest'),
          {'project': project_name, 'target': target.name, 'model': model.unique_id}) %}
  {%- endif -%}
  {%- set keep = [] -%}
  {%- for node in graph.nodes.values() -%}
    {%- if node.resource_type == 'model' and node.config.materialized == 'durable' and node.config.get('durable_schedule') -%}
      {%- do keep.append(api.Relation.create(database=node.database, schema=node.schema, identifier=node.alias) | string) -%}
    {%- endif -%}
  {%- endfor -%}
  {% do adapter.durable_reconcile_schedules(project_name, target.name, keep) %}
{% endmacro %}
