{#-
  Step macros: thin helpers that expand to flow text inside a {% call dbt_durable.flow() %}
  block. Each dispatches through adapter.dispatch(..., 'dbt_durable'), so a project can
  override any of them (e.g. a `durable__batched`) the dbt-utils way.
-#}

{#-
  batched(relation, key, batch_size, step, name='batch')
  Walks `relation` in ranges of the integer `key`, `batch_size` keys at a time. `step` is SQL
  containing the placeholder __batch__, replaced by the range predicate on `key`. Every batch
  is one checkpointed loop iteration: a crash resumes at the first unfinished batch.
-#}
{% macro batched(relation, key, batch_size, step, name='batch') -%}
  {{ return(adapter.dispatch('batched', 'dbt_durable')(relation, key, batch_size, step, name)) }}
{%- endmacro %}

{% macro default__batched(relation, key, batch_size, step, name) -%}
{%- set range = name ~ '_range' -%}
{%- set cursor = name ~ '_cursor' -%}
{%- set predicate = '(' ~ key ~ ' > $' ~ cursor ~ '.upto AND ' ~ key ~ ' <= $' ~ cursor ~ '.upto + ' ~ batch_size ~ ')' -%}
($dd$SELECT coalesce(min({{ key }}), 1) - 1 AS lo, coalesce(max({{ key }}), 0) AS hi FROM {{ relation }}$dd$ |=> '{{ range }}'
 ~> ('SELECT ${{ range }}.lo AS upto' |=> '{{ cursor }}')
 ~> loop(
      $dd${{ step | replace('__batch__', predicate) }}$dd$
      ~> ('SELECT ${{ cursor }}.upto + {{ batch_size }} AS upto' |=> '{{ cursor }}'),
      'SELECT ${{ cursor }}.upto < ${{ range }}.hi'))
{%- endmacro %}

{#-
  publish(relation, select_sql): replace the contents of `relation` with `select_sql` in one
  transactional step. The table is created on first use and keeps its identity afterwards,
  so downstream views keep working.
-#}
{% macro publish(relation, select_sql) -%}
  {{ return(adapter.dispatch('publish', 'dbt_durable')(relation, select_sql)) }}
{%- endmacro %}

{% macro default__publish(relation, select_sql) -%}
$dd$CREATE TABLE IF NOT EXISTS {{ relation }} AS {{ select_sql }} WITH NO DATA;
DELETE FROM {{ relation }};
INSERT INTO {{ relation }} {{ select_sql }}$dd$
{%- endmacro %}

{#- vacuum_analyze(relation): VACUUM cannot run in a transaction, so the step opts out. -#}
{% macro vacuum_analyze(relation) -%}
  {{ return(adapter.dispatch('vacuum_analyze', 'dbt_durable')(relation)) }}
{%- endmacro %}

{% macro default__vacuum_analyze(relation) -%}
'VACUUM (ANALYZE) {{ relation }}' with (transaction=false)
{%- endmacro %}
