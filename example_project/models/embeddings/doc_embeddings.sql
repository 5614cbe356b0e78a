{#- Embedding pipeline: chunk the documents (SQL) -> embed N chunks per request through an
    OpenAI-compatible embeddings API (http()) -> upsert into a pgvector table -> HNSW index.
    Each batch is one checkpointed loop iteration: build the request, send it (at least once,
    with the idempotency key {sys_idempotency_key}, stable across retries and resumes), upsert
    its vectors (exactly once), advance the cursor.

    The provider is one variable, `embeddings` (docs/embeddings.md). The default is the local
    endpoint (`python -m dbt_durable.embed`) at $DBT_DURABLE_EMBED_URL. For OpenAI:
      --vars '{embeddings: {base_url: "https://api.openai.com/v1", model: text-embedding-3-small,
               api_key: "{env:OPENAI_API_KEY}", concurrency: 4, rate: "50/s"}}' -#}
{{ config(materialized='durable') }}
{%- set provider = var('embeddings', {}) -%}
{%- set base_url = provider.get('base_url', env_var('DBT_DURABLE_EMBED_URL', 'http://127.0.0.1:8765/v1')) -%}
{%- set model = provider.get('model', 'wordllama-l2-supercat') -%}
{%- set dims = provider.get('dimensions', 256) | int -%}
{%- set batch = provider.get('batch_size', 16) | int -%}
{%- set api_key = provider.get('api_key', '') -%}
{%- set headers = '{"Content-Type": "application/json"' ~ (', "Authorization": "Bearer ' ~ api_key ~ '"' if api_key else '') ~ '}' -%}
{%- set flow_control = ['retries=5', "backoff='1s'"] -%}
{%- if provider.get('concurrency') %}{% do flow_control.append('concurrency=' ~ provider.get('concurrency')) %}{% endif -%}
{%- if provider.get('rate') %}{% do flow_control.append("rate='" ~ provider.get('rate') ~ "'") %}{% endif -%}
{%- set raw = target.schema ~ '_raw.embedding_docs' -%}
{%- set chunks = this.schema ~ '.doc_chunks' -%}
{%- set in_batch = 'chunk_id > $cursor.upto AND chunk_id <= $cursor.upto + ' ~ batch -%}
{% call dbt_durable.flow() %}
'CREATE SCHEMA IF NOT EXISTS {{ target.schema }}_raw' with (retries=3, backoff='200ms')
~> {{ create_embedding_docs(raw) }}
~> 'CREATE EXTENSION IF NOT EXISTS vector' with (retries=3, backoff='200ms')
~> $$CREATE TABLE IF NOT EXISTS {{ chunks }} (
       chunk_id integer PRIMARY KEY, doc_id integer NOT NULL, chunk_no integer NOT NULL, chunk text NOT NULL)$$
~> $$INSERT INTO {{ chunks }}
     SELECT row_number() OVER (ORDER BY doc_id, c.n), doc_id, c.n, title || ': ' || c.sentence
     FROM {{ raw }}, LATERAL regexp_split_to_table(body, '\.\s*') WITH ORDINALITY AS c(sentence, n)
     WHERE c.sentence <> '' ON CONFLICT DO NOTHING$$
~> $$CREATE TABLE IF NOT EXISTS {{ this }} (
       chunk_id integer PRIMARY KEY, doc_id integer NOT NULL, chunk_no integer NOT NULL, chunk text NOT NULL,
       embedding vector({{ dims }}) NOT NULL)$$
~> ('SELECT coalesce(max(chunk_id), 0) AS hi FROM {{ chunks }}' |=> 'chunks')
~> ('SELECT 0 AS upto' |=> 'cursor')
~> loop(
     ($$SELECT json_build_object('model', '{{ model }}', 'dimensions', {{ dims }},
                                 'input', json_agg(chunk ORDER BY chunk_id))::text AS body
        FROM {{ chunks }} WHERE {{ in_batch }}$$ |=> 'request')
     ~> (http('{{ base_url }}/embeddings', 'POST', '$request.body', '{{ headers }}')
           with ({{ flow_control | join(', ') }}) |=> 'response')
     ~> $$INSERT INTO {{ this }}
          SELECT c.chunk_id, c.doc_id, c.chunk_no, c.chunk, (d.item -> 'embedding')::text::vector
          FROM (SELECT *, row_number() OVER (ORDER BY chunk_id) - 1 AS i FROM {{ chunks }} WHERE {{ in_batch }}) AS c
          JOIN jsonb_array_elements($response.json -> 'data') AS d(item) ON (d.item ->> 'index')::int = c.i
          ON CONFLICT (chunk_id) DO UPDATE SET chunk = EXCLUDED.chunk, embedding = EXCLUDED.embedding$$
     ~> ('SELECT $cursor.upto + {{ batch }} AS upto' |=> 'cursor'),
     'SELECT $cursor.upto < $chunks.hi')
~> 'CREATE INDEX CONCURRENTLY IF NOT EXISTS doc_embeddings_hnsw ON {{ this }} USING hnsw (embedding vector_cosine_ops)'
     with (transaction=false)
~> ('SELECT count(*) AS vectors, count(DISTINCT doc_id) AS documents FROM {{ this }}' |=> 'embedded')
{% endcall %}
