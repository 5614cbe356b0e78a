"""The embedding pipeline SIGKILLed mid-batch, through the real HTTP path: a runner process
sends its batches to the local endpoint (a separate process, which counts every request) and
is killed, then the same command resumes the run. Every batch is embedded; no batch is sent
twice except the one in flight at the kill, which is resent with the same idempotency key;
every chunk has exactly one vector."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter

import pytest

from dbt_durable.embed.pipeline import embedding_flow
from dbt_durable.embed.process import LocalEndpoint
from tests.conftest import Space

pytestmark = pytest.mark.crash

CHUNKS, BATCH = 200, 16
BATCHES = -(-CHUNKS // BATCH)  # 13
HTTP_NODE, UPSERT_NODE = "0.4.0.1.0", "0.4.0.2"  # the loop body's http() and upsert steps
TOPICS = ["garden tools", "sourdough bread", "marathon training", "coffee brewing", "telescopes"]


def run(space: Space, flow: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "dbt_durable", "--dsn", space.dsn, "--schema", space.schema]
    cmd += ["start", "--name", "embed", "--key", "docs", "--wait", flow]
    env = {k: v for k, v in os.environ.items() if k != "DBT_DURABLE_FAULT"}
    env["DBT_DURABLE_HTTP_ALLOW"] = "127.0.0.1"
    if fault:
        env["DBT_DURABLE_FAULT"] = f"{fault}@embed"
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize(
    ("fault", "resent"),
    [
        (f"in_step@{HTTP_NODE}#5", 1),  # batch 6's response received, not checkpointed: resent once
        (f"in_step@{UPSERT_NODE}#5", 0),  # batch 6's response checkpointed, its upsert rolled back
        (f"before_step@{HTTP_NODE}#5", 0),  # killed before batch 6 was sent
    ],
)
def test_sigkill_mid_batch_then_resume_embeds_every_chunk_once(
    space: Space, endpoint: LocalEndpoint, fault: str, resent: int
) -> None:
    space.query(
        "CREATE TABLE chunks AS SELECT g AS chunk_id, "
        f"'Note ' || g || ' about ' || (ARRAY{TOPICS!r})[1 + g % {len(TOPICS)}] AS chunk "
        f"FROM generate_series(1, {CHUNKS}) AS g"
    )
    flow = embedding_flow(endpoint.base_url, "chunks", "chunk_vectors", batch_size=BATCH)
    killed = run(space, flow, fault)
    assert killed.returncode == -signal.SIGKILL, f"fault {fault} never fired: {killed.stderr[-2000:]}"
    before = len(endpoint.requests())
    assert before == (6 if fault.startswith("in_step") else 5)
    resumed = run(space, flow)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    sent = endpoint.requests()
    run_id = space.query("SELECT run_id::text FROM {state}.runs")[0][0]
    per_key = Counter(r["key"] for r in sent)
    assert set(per_key) == {f"{run_id}:{HTTP_NODE}#{i}" for i in range(BATCHES)}  # every batch
    assert len(sent) == BATCHES + resent
    twice = [key for key, n in per_key.items() if n > 1]
    assert twice == ([f"{run_id}:{HTTP_NODE}#5"] if resent else [])  # only the one in flight
    assert sum(r["inputs"] for r in sent) == CHUNKS + resent * BATCH
    assert space.query("SELECT count(*), count(DISTINCT chunk_id) FROM chunk_vectors") == [(CHUNKS, CHUNKS)]
    assert space.query(
        "SELECT count(*) FROM chunks LEFT JOIN chunk_vectors USING (chunk_id) WHERE embedding IS NULL"
    ) == [(0,)]
