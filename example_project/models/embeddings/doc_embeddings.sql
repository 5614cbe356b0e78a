{#- Embedding pipeline: chunk -> embed (hashing-trick SQL function, offline) -> upsert into a
    pgvector table, in checkpointed batches; then build the vector index outside a transaction. -#}
{{ config(materialized='durable') }}
{%- set raw = target.schema ~ '_raw.raw_docs' -%}
{%- set chunks = this.schema ~ '.doc_chunks' -%}
{% call dbt_durable.flow() %}
'CREATE SCHEMA IF NOT EXISTS {{ target.schema }}_raw' with (retries=3, backoff='200ms')
~> {{ create_raw_docs(raw) }}
~> {{ create_hash_embed(this.schema) }}
~> $$CREATE TABLE IF NOT EXISTS {{ chunks }} (doc_id integer, chunk_no integer, chunk text, PRIMARY KEY (doc_id, chunk_no))$$
~> $$INSERT INTO {{ chunks }}
     SELECT doc_id, c.n, c.chunk FROM {{ raw }},
            LATERAL regexp_split_to_table(body, '\.\s+') WITH ORDINALITY AS c(chunk, n)
     WHERE c.chunk <> '' ON CONFLICT DO NOTHING$$
~> $$CREATE TABLE IF NOT EXISTS {{ this }} (
       doc_id integer, chunk_no integer, chunk text, embedding vector(64), PRIMARY KEY (doc_id, chunk_no))$$
~> {{ dbt_durable.batched(chunks, 'doc_id', 50,
        'INSERT INTO ' ~ this ~ ' SELECT doc_id, chunk_no, chunk, ' ~ this.schema ~ '.hash_embed(chunk) FROM '
        ~ chunks ~ ' WHERE __batch__ ON CONFLICT (doc_id, chunk_no) DO UPDATE SET chunk = EXCLUDED.chunk, embedding = EXCLUDED.embedding',
        name='embed') }}
~> 'CREATE INDEX CONCURRENTLY IF NOT EXISTS doc_embeddings_hnsw ON {{ this }} USING hnsw (embedding vector_cosine_ops)'
     with (transaction=false)
~> ('SELECT count(*) AS vectors FROM {{ this }}' |=> 'embedded')
{% endcall %}
