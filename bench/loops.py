"""Long loops never slow down: the cost of a loop's last iterations against its first.

One run of ``loop('UPDATE ctr SET i = i + 1', 'SELECT i FROM ctr WHERE i < N') with
(max_iterations=0)``: a counter in a table and a condition (its rows, ``i``, differ every
iteration, so the loop is never idle-throttled). Each iteration is two checkpointed nodes.
The cost of a window of W iterations is read from the nodes' own timestamps, on the server's
clock: ``max(finished_at) − min(started_at)`` over the window's nodes, divided by W.

- ``loop_iteration_cost_growth``: the last window (iterations N−W+1..N; 99,001–100,000 in the
  full run) over the first (1..W).
- ``loop_iteration_cost_growth_vs_fresh_loop``: the same last window over the first W
  iterations of a *new* loop run started right after the long one ended, so both sides are
  measured within seconds of each other on a machine whose load drifts over the minutes the
  long loop takes.
"""

from __future__ import annotations

from psycopg import sql

from bench.db import connect, drop_schemas, fresh_schema
from bench.result import Bench, ScenarioResult
from bench.scenarios import expect, run_flow
from dbt_durable.api import Client
from dbt_durable.config import Settings

METRICS = [
    "loop_iteration_cost_growth",
    "loop_iteration_cost_growth_vs_fresh_loop",
    "loop_first_window_us_per_iteration",
    "loop_last_window_us_per_iteration",
]
STATE, WORK = "bench_loop", "bench_loop_work"


def loop_flow(n: int) -> str:
    return (
        f"loop('UPDATE {WORK}.ctr SET i = i + 1', 'SELECT i FROM {WORK}.ctr WHERE i < {n}')"
        " with (max_iterations=0)"
    )


def _reset_counter(dsn: str) -> None:
    with connect(dsn) as conn:
        conn.execute(sql.SQL("TRUNCATE {}.ctr").format(sql.Identifier(WORK)))
        conn.execute(sql.SQL("INSERT INTO {}.ctr VALUES (0)").format(sql.Identifier(WORK)))


def window_s(dsn: str, run_id: str, first: int, last: int) -> float:
    """Seconds per iteration over iterations ``first..last`` (0-based, inclusive) of the run's
    one loop, from its nodes' timestamps."""
    with connect(dsn) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT extract(epoch FROM max(finished_at) - min(started_at))::float8, count(*)"
                " FROM {}.nodes WHERE run_id = %s AND status = 'completed' AND exec_key LIKE '%%#%%'"
                " AND split_part(exec_key, '#', 2)::int BETWEEN %s AND %s"
            ).format(sql.Identifier(STATE)),
            (run_id, first, last),
        ).fetchone()
    if not row or row[0] is None or int(row[1]) != 2 * (last - first + 1):
        raise RuntimeError(
            f"iterations {first}..{last} of run {run_id}: {row and row[1]} nodes, expected 2 each"
        )
    return float(row[0]) / (last - first + 1)


def loop_growth(b: Bench) -> ScenarioResult:
    n, w = b.sizes.loop_iterations, b.sizes.loop_window
    res = ScenarioResult("loop", params={"iterations": n, "window": w, "flow": loop_flow(n)})
    fresh_schema(b.dsn, WORK)
    with connect(b.dsn) as conn:
        conn.execute(sql.SQL("CREATE TABLE {}.ctr (i bigint NOT NULL)").format(sql.Identifier(WORK)))
    client = Client(Settings(dsn=b.dsn, schema=STATE))
    try:
        _reset_counter(b.dsn)
        long = run_flow(client, loop_flow(n))
        expect(long.outcome, "completed", 2 * n)
        first = window_s(b.dsn, long.outcome.run_id, 0, w - 1)
        last = window_s(b.dsn, long.outcome.run_id, n - w, n - 1)
        _reset_counter(b.dsn)
        fresh = run_flow(client, loop_flow(w))
        expect(fresh.outcome, "completed", 2 * w)
        fresh_first = window_s(b.dsn, fresh.outcome.run_id, 0, w - 1)
    finally:
        drop_schemas(b.dsn, STATE, WORK)
    res.notes["long_loop_s"] = round(long.resume_s, 3)
    res.metrics["loop_iteration_cost_growth"] = last / first
    res.metrics["loop_iteration_cost_growth_vs_fresh_loop"] = last / fresh_first
    res.metrics["loop_first_window_us_per_iteration"] = first * 1e6
    res.metrics["loop_last_window_us_per_iteration"] = last * 1e6
    res.notes["fresh_loop_first_window_us_per_iteration"] = fresh_first * 1e6
    b.log(
        f"[loop] {n} iterations in {long.resume_s:.1f}s: first {w} at {first * 1e6:.0f} us/iteration, "
        f"last {w} at {last * 1e6:.0f} (growth {last / first:.3f}); a fresh loop's first {w}: "
        f"{fresh_first * 1e6:.0f} (growth {last / fresh_first:.3f})"
    )
    return res
