{#-
  The flow block of a durable model:

    {{ config(materialized='durable') }}
    {% call dbt_durable.flow() %}
      'INSERT INTO ...' ~> ('SELECT ...' |=> 'n') ~> ...
    {% endcall %}

  Jinja renders first (ref, source, var, this and macros all work inside the step strings);
  the rendered text is the model's compiled code. It is checked as a flow whenever the model is
  rendered (parse, compile, run), and errors name the position in the model's source file.
  `dbt show` gets `select * from {{ this }}` instead: it shows the model's relation.
-#}
{% macro flow() -%}
  {%- set text = caller() -%}
  {%- if adapter.type() == 'durable' and model is defined -%}
    {%- do adapter.durable_check_flow(text, model.raw_code, model.original_file_path) -%}
  {%- endif -%}
  {%- if execute and flags.WHICH == 'show' -%}
    {{ return('select * from ' ~ this) }}
  {%- endif -%}
  {{ return(text) }}
{%- endmacro %}

{#-
  is_incremental() for durable models in durable_mode='incremental': true when the model's
  relation exists and this is not a --full-refresh. (dbt's own is_incremental() is true only
  for materialized='incremental'.)
-#}
{% macro is_incremental() -%}
  {%- if not execute -%}{{ return(false) }}{%- endif -%}
  {%- set relation = adapter.get_relation(this.database, this.schema, this.identifier) -%}
  {{ return(relation is not none and config.get('durable_mode', 'shadow') == 'incremental'
            and not should_full_refresh()) }}
{%- endmacro %}
