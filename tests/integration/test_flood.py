"""Back-pressure: a flood of queued runs drains with bounded worker memory."""

from __future__ import annotations

import os
import time

from psycopg.types.json import Jsonb

from dbt_durable.graph.build import compile_flow
from tests.conftest import Space
from tests.integration.test_worker import worker

RUNS = int(os.environ.get("DBT_DURABLE_FLOOD_RUNS", "10000"))


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_ten_thousand_queued_runs_drain_with_bounded_memory(space: Space) -> None:
    space.query("CREATE TABLE effects(run_id uuid)")
    client = space.client()
    client.migrate()
    flow = compile_flow("'INSERT INTO effects VALUES (''{sys_run_id}'')'")
    space.query(
        "INSERT INTO {state}.runs (flow_name, run_key, flow_text, graph, graph_hash) "
        "SELECT 'flood', g::text, %s, %s, %s FROM generate_series(1, %s) g",
        (flow.text, Jsonb(flow.to_json()), flow.graph_hash, RUNS),
    )
    w = worker(space, "--concurrency", "8")
    peak = 0.0
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            peak = max(peak, _peak_rss_mb(w.pid))
            if space.query("SELECT count(*) FROM {state}.runs WHERE status <> 'completed'") == [(0,)]:
                break
            time.sleep(0.5)
        peak = max(peak, _peak_rss_mb(w.pid))
    finally:
        w.terminate()
        w.wait(timeout=30)
    assert space.query("SELECT count(*), count(DISTINCT run_id) FROM effects") == [(RUNS, RUNS)]
    # A claim takes at most --concurrency runs, so memory does not grow with the queue.
    assert peak < 400, f"worker peak RSS {peak:.0f} MB"
