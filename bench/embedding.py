"""The embedding pipeline through the local endpoint: chunks/s end to end, and the ratio to the
endpoint's own throughput called directly in a loop with the same batch size.

Both sides send the same chunks in the same batches to the same endpoint process
(``python -m dbt_durable.embed``). The pipeline is ``dbt_durable.embed.pipeline.embedding_flow``:
per batch a checkpointed loop iteration (build the request in SQL, ``http()``, upsert the
vectors into pgvector, advance the cursor). The direct loop only sends and reads (one kept-alive
httpx client), so the ratio is what durability (checkpoints, the stored response, the upsert)
costs on top of the embedding itself.
"""

from __future__ import annotations

import os
import time

import httpx
import psycopg

from bench.result import Bench, ScenarioResult

METRICS = ["embedding_pipeline_chunks_per_s", "embedding_endpoint_chunks_per_s", "embedding_pipeline_ratio"]
BATCH = 64
SCHEMA = "bench_embedding"
TOPICS = [
    "garden tools for spring planting",
    "baking sourdough bread with a wild yeast starter",
    "training for a marathon with long slow runs",
    "brewing coffee with a pour-over cone",
    "watching planets through a small telescope",
    "repairing a bicycle puncture with a patch",
    "house training a puppy with treats",
    "saving for retirement in index funds",
]


def _chunk(i: int) -> str:
    return f"Note {i}: a few practical sentences about {TOPICS[i % len(TOPICS)]}, part {i // len(TOPICS)}."


def embedding_pipeline(b: Bench) -> ScenarioResult:
    """10,000 chunks (fewer with --quick/--tiny) embedded by the durable pipeline vs directly."""
    from dbt_durable.api import Client
    from dbt_durable.config import Settings
    from dbt_durable.embed.pipeline import embedding_flow
    from dbt_durable.embed.process import LocalEndpoint

    n = {"full": 10_000, "quick": 2_000}.get(b.sizes.mode, 640)
    reps = min(b.sizes.reps, 3)  # a full repetition takes about a minute
    res = ScenarioResult("embedding_pipeline", params={"chunks": n, "batch_size": BATCH})
    texts = [_chunk(i) for i in range(1, n + 1)]
    os.environ["DBT_DURABLE_HTTP_ALLOW"] = ",".join(
        {*filter(None, os.environ.get("DBT_DURABLE_HTTP_ALLOW", "").split(",")), "127.0.0.1"}
    )
    with LocalEndpoint() as endpoint, psycopg.connect(b.dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        with httpx.Client(timeout=60) as client:
            client.post(f"{endpoint.base_url}/embeddings", json={"input": texts[:BATCH]})  # warm up
            for _ in range(reps):
                started = time.perf_counter()
                for lo in range(0, n, BATCH):
                    answer = client.post(
                        f"{endpoint.base_url}/embeddings", json={"input": texts[lo : lo + BATCH]}
                    )
                    answer.raise_for_status()
                res.sample("direct_chunks_per_s", n / (time.perf_counter() - started))
        for rep in range(reps):
            conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
            conn.execute(f"CREATE SCHEMA {SCHEMA}")
            conn.execute(f"CREATE TABLE {SCHEMA}.chunks (chunk_id integer PRIMARY KEY, chunk text NOT NULL)")
            with conn.cursor() as cur, cur.copy(f"COPY {SCHEMA}.chunks (chunk_id, chunk) FROM STDIN") as copy:
                for i, text in enumerate(texts, 1):
                    copy.write_row((i, text))
            flow = embedding_flow(
                endpoint.base_url, f"{SCHEMA}.chunks", f"{SCHEMA}.vectors", batch_size=BATCH
            )
            endpoint.clear()
            started = time.perf_counter()
            run = Client(Settings(dsn=b.dsn, schema=f"{SCHEMA}_state")).start(flow, wait=True)
            elapsed = time.perf_counter() - started
            if run.outcome is None or run.outcome.status != "completed":
                raise RuntimeError(f"the pipeline did not complete: {run.outcome}")
            vectors = conn.execute(f"SELECT count(DISTINCT chunk_id) FROM {SCHEMA}.vectors").fetchone()
            sent = endpoint.requests()
            if not vectors or vectors[0] != n or len(sent) != -(-n // BATCH):
                raise RuntimeError(f"{vectors} vectors for {n} chunks, {len(sent)} requests")
            res.sample("pipeline_chunks_per_s", n / elapsed)
            b.log(
                f"[embedding] rep {rep + 1}: {n} chunks in {elapsed:.2f}s through the pipeline "
                f"({n / elapsed:.0f}/s), {len(sent)} requests"
            )
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA}_state CASCADE")
    pipeline, direct = res.stats["pipeline_chunks_per_s"].median, res.stats["direct_chunks_per_s"].median
    res.metrics.update(
        embedding_pipeline_chunks_per_s=pipeline,
        embedding_endpoint_chunks_per_s=direct,
        embedding_pipeline_ratio=pipeline / direct,
    )
    b.log(
        f"[embedding] pipeline {pipeline:.0f} chunks/s, endpoint {direct:.0f} chunks/s: ratio {pipeline / direct:.2f}"
    )
    return res
