{#- Run-operations. With a `type: postgres` profile they explain what to change. -#}

{% macro _durable_require_adapter(operation) %}
  {%- if adapter.type() != 'durable' -%}
    {{ exceptions.raise_compiler_error(
        operation ~ " needs the dbt-durable adapter, but target '" ~ target.name ~ "' has type: "
        ~ adapter.type() ~ ". In profiles.yml, change `type: " ~ adapter.type() ~ "` to `type: durable` "
        ~ "(same fields; optional durable_schema and durable_concurrency).") }}
  {%- endif -%}
{% endmacro %}

{#- The relation a model builds in this target: runs are keyed by it, so `select: name`
    finds the runs of this target's model only. -#}
{% macro _durable_relation_of(select) %}
  {%- for node in graph.nodes.values() -%}
    {%- if node.resource_type == 'model' and (node.name == select or node.unique_id == select) -%}
      {{ return(api.Relation.create(database=node.database, schema=node.schema, identifier=node.alias) | string) }}
    {%- endif -%}
  {%- endfor -%}
  {{ return(none) }}
{% endmacro %}

{% macro _durable_operation(operation, args) %}
  {{ dbt_durable._durable_require_adapter(operation) }}
  {%- if execute -%}
    {%- if args.get('select') and operation != 'durable_run' -%}
      {%- set args = args.copy() -%}
      {%- do args.update({'relation': dbt_durable._durable_relation_of(args.get('select'))}) -%}
    {%- endif -%}
    {%- for line in adapter.durable_operation(operation, args) -%}
      {{ log(line, info=True) }}
    {%- endfor -%}
  {%- endif -%}
{% endmacro %}

{% macro durable_run(select=none, vars=none, fresh=none, wait=none) %}
  {%- set args = kwargs.copy() -%}
  {%- if select is not none %}{% do args.update({'select': select}) %}{% endif -%}
  {%- if vars is not none %}{% do args.update({'vars': vars}) %}{% endif -%}
  {%- if fresh is not none %}{% do args.update({'fresh': fresh}) %}{% endif -%}
  {%- if wait is not none %}{% do args.update({'wait': wait}) %}{% endif -%}
  {{ dbt_durable._durable_operation('durable_run', args) }}
{% endmacro %}

{% macro durable_status() %}
  {{ dbt_durable._durable_operation('durable_status', kwargs) }}
{% endmacro %}

{% macro durable_signal() %}
  {{ dbt_durable._durable_operation('durable_signal', kwargs) }}
{% endmacro %}

{% macro durable_cancel() %}
  {{ dbt_durable._durable_operation('durable_cancel', kwargs) }}
{% endmacro %}
