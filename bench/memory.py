"""Result caps bound memory: a step that would return 30M rows fails at its cap, and the
runner's peak RSS stays that of a one-row step (rows are read in chunks and the statement is
cancelled on the server once past the cap)."""

from __future__ import annotations

import os
import subprocess
import sys

from bench.result import Bench, ScenarioResult

METRICS = ["result_cap_peak_rss_mb", "result_cap_rss_growth_mb"]

# A child runner: start the flow, wait for it, print its status (the parent reads ru_maxrss).
_CHILD = """
import sys
from dbt_durable.api import Client
from dbt_durable.config import Settings
started = Client(Settings(dsn=sys.argv[1], schema=sys.argv[2])).start(sys.argv[3], wait=True)
print(started.outcome.status, (started.outcome.error or "")[:200])
"""


def _peak_rss_mb(b: Bench, schema: str, flow: str) -> tuple[float, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, b.dsn, schema, flow], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"runner exited with {proc.returncode}: {out}")
    return usage.ru_maxrss / 1024, out.strip()


def result_cap_memory(b: Bench) -> ScenarioResult:
    """Peak RSS of a runner whose step returns ``rows`` rows (over the cap) vs a one-row step."""
    rows = {"full": 30_000_000, "quick": 3_000_000}.get(b.sizes.mode, 300_000)
    res = ScenarioResult("result_cap_memory", params={"rows": rows})
    schema = "bench_memory"
    big = f"'SELECT g, repeat(''x'', 20) AS pad FROM generate_series(1, {rows}) AS g'"
    for _ in range(b.sizes.reps):
        small_mb, _ = _peak_rss_mb(b, schema, "'SELECT 1'")
        big_mb, outcome = _peak_rss_mb(b, schema, big)
        if not outcome.startswith("failed") or "over the cap" not in outcome:
            raise RuntimeError(f"the {rows}-row step should fail at its cap, got: {outcome}")
        res.sample("one_row_peak_mb", small_mb)
        res.sample("capped_peak_mb", big_mb)
        b.log(f"[memory] {rows} rows: peak {big_mb:.0f} MB vs {small_mb:.0f} MB for one row ({outcome[:60]})")
    res.metrics["result_cap_peak_rss_mb"] = res.stats["capped_peak_mb"].median
    res.metrics["result_cap_rss_growth_mb"] = (
        res.stats["capped_peak_mb"].median - res.stats["one_row_peak_mb"].median
    )
    return res
