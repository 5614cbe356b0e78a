{#-
  Step macros: thin helpers that expand to flow text inside a {% call dbt_durable.flow() %}
  block. Each dispatches through adapter.dispatch(..., 'dbt_durable'), so a project can
  override any of them (e.g. a `durable__batched`) the dbt-utils way.
-#}

{#-
  batched(relation, key, batch_size, step, name='batch')
  Walks `relation` in order of `key`, `batch_size` rows at a time (keyset pagination: each batch
  is the next `batch_size` distinct keys after the last one done, so any orderable key works: integers,
  UUIDs, text, timestamps). `step` is SQL containing the placeholder __batch__, replaced by the
  batch's predicate on `key`. Every batch is one checkpointed loop iteration: a crash resumes at
  the first unfinished batch. Keys are walked up to the largest key present when the walk
  starts; rows that share a key are in one batch.
-#}
{% macro batched(relation, key, batch_size, step, name='batch') -%}
  {{ return(adapter.dispatch('batched', 'dbt_durable')(relation, key, batch_size, step, name)) }}
{%- endmacro %}

{% macro default__batched(relation, key, batch_size, step, name) -%}
{%- if (batch_size | int) < 1 or (batch_size | int | string) != (batch_size | string) -%}
  {{ exceptions.raise_compiler_error("dbt_durable.batched: batch_size must be a positive integer, got " ~ batch_size) }}
{%- endif -%}
{%- set range = name ~ '_range' -%}
{%- set cursor = name ~ '_cursor' -%}
{%- set guard = '/* dbt_durable.batched: key ' ~ key ~ ' must be of an orderable type */ ' -%}
{%- set predicate = '(($' ~ cursor ~ '.after? IS NULL OR ' ~ key ~ ' > $' ~ cursor ~ '.after?) AND ' ~ key ~ ' <= $' ~ cursor ~ '.upto?)' -%}
{#- max() is not defined for every orderable type (uuid before PostgreSQL 18): ORDER BY ... LIMIT 1 -#}
{%- set last = 'SELECT k FROM (SELECT DISTINCT ' ~ key ~ ' AS k FROM ' ~ relation ~ ' WHERE ' -%}
{%- set first = last ~ key ~ ' <= $' ~ range ~ '.hi? ORDER BY 1 LIMIT ' ~ batch_size ~ ') b ORDER BY 1 DESC LIMIT 1' -%}
{%- set following = last ~ key ~ ' > $' ~ cursor ~ '.upto? AND ' ~ key ~ ' <= $' ~ range ~ '.hi? ORDER BY 1 LIMIT ' ~ batch_size ~ ') b ORDER BY 1 DESC LIMIT 1' -%}
($dd${{ guard }}SELECT (SELECT {{ key }} FROM {{ relation }} ORDER BY 1 DESC NULLS LAST LIMIT 1) AS hi$dd$ |=> '{{ range }}'
 ~> ($dd$SELECT NULL AS after, ({{ first }}) AS upto$dd$ |=> '{{ cursor }}')
 ~> loop(
      $dd${{ step | replace('__batch__', predicate) }}$dd$
      ~> ($dd$SELECT ${{ cursor }}.upto? AS after, ({{ following }}) AS upto$dd$ |=> '{{ cursor }}'),
      'SELECT ${{ cursor }}.upto? IS NOT NULL'))
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
