"""The benchmark harness keeps working: `python -m bench --tiny` runs and reports every key.

It asserts nothing about speed (speed is measured in bench/, never in tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KEYS = [
    "per_node_ratio_vs_raw_commit",
    "per_node_ratio_vs_dbos",
    "fanout_efficiency",
    "graph_10k_plan_s",
    "graph_100k_plan_s",
    "graph_100k_peak_mb",
    "resume_ratio",
    "dbt_build_overhead",
    "worker_throughput_ratio",
    "worker_claim_latency_p50_ms",
    "worker_claim_latency_p95_ms",
    "per_node_ratio_vs_one_trip",
    "worker_statements_per_run",
    "worker_wal_bytes_per_run",
    "worker_raw_wal_bytes_per_commit",
    "queue_ratio_vs_procrastinate",
    "queue_ratio_vs_dbos",
    "chaos_postgres_restart_pct",
    "chaos_pg_backend_kill_pct",
    "chaos_pool_exhaustion_pct",
    "chaos_crash_recovery_pct",
    "chaos_repeated_kills_pct",
    "loop_iteration_cost_growth",
]


def test_bench_tiny_reports_every_key(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "bench", "--tiny", "--json", str(out)]
    if os.environ.get("DBT_DURABLE_TEST_DSN"):
        cmd += ["--dsn", os.environ["DBT_DURABLE_TEST_DSN"]]
    subprocess.run(cmd, cwd=REPO, check=True, timeout=300, capture_output=True)
    doc = json.loads(out.read_text())
    for key in KEYS:
        assert key in doc
        assert doc[key] is not None or key in doc["reasons"]  # a null always carries a reason
    assert doc["per_node_ratio_vs_raw_commit"] is not None
    assert not any(str(r).startswith("error:") for r in doc["reasons"].values())
    for scenario in doc["scenarios"].values():
        for stat in scenario["stats"].values():
            assert stat["n"] >= 3 and stat["min"] <= stat["median"] <= stat["max"]
