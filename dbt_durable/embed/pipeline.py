"""The embedding pipeline as a flow, for use outside dbt (the example project's
``models/embeddings/doc_embeddings.sql`` is the same flow, written as a dbt model).

Each batch of ``batch_size`` chunks is one checkpointed loop iteration: a SQL step builds the
request body, an ``http()`` step sends it (at least once, its ``Idempotency-Key`` stable across
retries and resumes), a SQL step upserts its vectors (exactly once), and the cursor advances.
"""

from __future__ import annotations

import json


def embedding_flow(
    base_url: str,
    chunks: str,
    target: str,
    batch_size: int = 16,
    model: str = "wordllama-l2-supercat",
    dimensions: int = 256,
    api_key: str | None = None,
    http_options: str = "retries=5, backoff='1s'",
) -> str:
    """The flow text: embed every row of ``chunks`` (``chunk_id integer`` from 1, ``chunk
    text``) into ``target`` (created: ``chunk_id``, ``chunk``, ``embedding vector(dimensions)``,
    with an HNSW index). ``api_key`` is sent as a bearer token; write it as ``{env:NAME}``."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    in_batch = f"chunk_id > $cursor.upto AND chunk_id <= $cursor.upto + {batch_size}"
    index = target.replace(".", "_") + "_hnsw"
    return f"""
'CREATE EXTENSION IF NOT EXISTS vector'
~> $$CREATE TABLE IF NOT EXISTS {target} (
       chunk_id integer PRIMARY KEY, chunk text NOT NULL, embedding vector({dimensions}) NOT NULL)$$
~> ('SELECT coalesce(max(chunk_id), 0) AS hi FROM {chunks}' |=> 'chunks')
~> ('SELECT 0 AS upto' |=> 'cursor')
~> loop(
     ($$SELECT json_build_object('model', '{model}', 'dimensions', {dimensions},
                                 'input', json_agg(chunk ORDER BY chunk_id))::text AS body
        FROM {chunks} WHERE {in_batch}$$ |=> 'request')
     ~> (http('{base_url}/embeddings', 'POST', '$request.body', '{json.dumps(headers)}')
           with ({http_options}) |=> 'response')
     ~> $$INSERT INTO {target}
          SELECT c.chunk_id, c.chunk, (d.item -> 'embedding')::text::vector
          FROM (SELECT *, row_number() OVER (ORDER BY chunk_id) - 1 AS i FROM {chunks} WHERE {in_batch}) AS c
          JOIN jsonb_array_elements($response.json -> 'data') AS d(item) ON (d.item ->> 'index')::int = c.i
          ON CONFLICT (chunk_id) DO UPDATE SET chunk = EXCLUDED.chunk, embedding = EXCLUDED.embedding$$
     ~> ('SELECT $cursor.upto + {batch_size} AS upto' |=> 'cursor'),
     'SELECT $cursor.upto < $chunks.hi')
~> 'CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} ON {target} USING hnsw (embedding vector_cosine_ops)'
     with (transaction=false)
~> 'SELECT count(*) AS vectors FROM {target}'
"""
