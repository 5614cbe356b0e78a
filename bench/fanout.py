"""Fan-out: a join of N sleeping nodes at concurrency C, vs ideal time and a raw connection loop."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from bench import flows
from bench.baselines import SELECT_1_RESULT, RawCommitLoop
from bench.db import drop_schemas, fresh_schema
from bench.result import Bench, ScenarioResult
from bench.scenarios import expect, run_flow
from bench.stats import paired_ratios, timed
from dbt_durable.api import Client
from dbt_durable.config import Settings


async def _raw_fanout(dsn: str, table: sql.Identifier, n: int, sleep_s: float, workers: int) -> None:
    """``n`` BEGIN/pg_sleep/INSERT/COMMIT on ``workers`` async connections: the machine's ideal."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    run_id = uuid.uuid4()
    insert = sql.SQL("INSERT INTO {} (run_id, key, result) VALUES (%s, %s, %s)").format(table)

    async def worker() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            while not queue.empty():
                i = queue.get_nowait()
                await conn.execute("BEGIN")
                await conn.execute("SELECT pg_sleep(%s)", (sleep_s,))
                await conn.execute(insert, (run_id, str(i), Jsonb(SELECT_1_RESULT)))
                await conn.execute("COMMIT")

    await asyncio.gather(*(worker() for _ in range(workers)))


def fanout(b: Bench) -> ScenarioResult:
    """A join of N ``SELECT pg_sleep(s)`` nodes at concurrency C: ideal time over measured time."""
    s = b.sizes
    ideal = s.fanout_n * s.fanout_sleep_s / s.fanout_concurrency
    res = ScenarioResult(
        "fanout",
        params={
            "n": s.fanout_n,
            "sleep_s": s.fanout_sleep_s,
            "concurrency": s.fanout_concurrency,
            "ideal_s": ideal,
        },
    )
    state, work = "bench_fanout", "bench_fanout_raw"
    fresh_schema(b.dsn, work)
    RawCommitLoop(b.dsn, work).close()  # creates the checkpoint table
    table = sql.Identifier(work, "checkpoints")
    client = Client(Settings(dsn=b.dsn, schema=state, concurrency=s.fanout_concurrency))
    flow = flows.fanout(s.fanout_n, s.fanout_sleep_s)

    def raw() -> None:
        asyncio.run(_raw_fanout(b.dsn, table, s.fanout_n, s.fanout_sleep_s, s.fanout_concurrency))

    try:
        if s.warmup:
            expect(run_flow(client, flow).outcome, "completed", s.fanout_n)
        for rep in range(s.reps):
            sides = ["runner", "raw"] if rep % 2 == 0 else ["raw", "runner"]
            for side in sides:
                if side == "runner":
                    t = run_flow(client, flow)
                    expect(t.outcome, "completed", s.fanout_n)
                    res.sample("runner_resume_s", t.resume_s)
                    res.sample("runner_with_start_s", t.total_s)
                    res.sample("efficiency", ideal / t.resume_s)
                else:
                    raw_s, _ = timed(raw)
                    res.sample("raw_pool_s", raw_s)
                    res.sample("raw_pool_efficiency", ideal / raw_s)
            r = res.stats["runner_resume_s"].values[-1]
            w = res.stats["raw_pool_s"].values[-1]
            b.log(
                f"[fanout] rep {rep + 1}/{s.reps}: runner {r:.3f}s (efficiency {ideal / r:.2f}), "
                f"raw {s.fanout_concurrency}-connection loop {w:.3f}s (efficiency {ideal / w:.2f})"
            )
    finally:
        drop_schemas(b.dsn, state, work)
    res.metrics["fanout_efficiency"] = res.stats["efficiency"].median
    res.metrics["fanout_efficiency_raw_baseline"] = res.stats["raw_pool_efficiency"].median
    res.stats["ratio_vs_raw_pool"] = paired_ratios(res.stats["runner_resume_s"], res.stats["raw_pool_s"])
    res.metrics["fanout_ratio_vs_raw_pool"] = res.stats["ratio_vs_raw_pool"].median
    return res
