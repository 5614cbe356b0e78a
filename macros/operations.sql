{#- Run-operations. With a `type: postgres` profile they explain what to change. -#}

{% macro _durable_require_adapter(operation) %}
  {%- if adapter.type() != 'durable' -%}
    {{ exceptions.raise_compiler_error(
        operation ~ " needs the dbt-durable adapter, but target '" ~ target.name ~ "' has type: "
        ~ adapter.type() ~ ". In profiles.yml, change `type: " ~ adapter.type() ~ "` to `type: durable` "
        ~ "(same fields; optional durable_schema and durable_concurrency).") }}
  {%- endif -%}
{% endmacro %}

{% macro _durable_operation(operation, args) %}
  {{ dbt_durable._durable_require_adapter(operation) }}
  {%- if execute -%}
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
