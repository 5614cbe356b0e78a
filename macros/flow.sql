{#-
  The flow block of a durable model:

    {{ config(materialized='durable') }}
    {% call dbt_durable.flow() %}
      'INSERT INTO ...' ~> ('SELECT ...' |=> 'n') ~> ...
    {% endcall %}

  Jinja renders first (ref, source, var, this and macros all work inside the step strings);
  the rendered text is the model's compiled code, parsed as a flow when the model runs.
-#}
{% macro flow() -%}
  {{ return(caller()) }}
{%- endmacro %}
