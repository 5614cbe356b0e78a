"""Worker throughput: queued runs drained by one ``Worker`` vs the same runs resumed one by one."""

from __future__ import annotations

import asyncio

from bench import flows
from bench.db import drop_schemas
from bench.pending import missing
from bench.result import Bench, ScenarioResult
from bench.scenarios import expect
from bench.stats import paired_ratios, timed
from dbt_durable.api import Client
from dbt_durable.config import Settings

METRICS = ["worker_throughput_ratio"]
RUNS_AT_ONCE = 4


def _queue(client: Client, flow: str, runs: int) -> list[str]:
    return [client.start(flow, wait=False).run_id for _ in range(runs)]


def _drain(settings: Settings) -> dict[str, int]:
    from dbt_durable.runner.worker import Worker

    async def go() -> dict[str, int]:
        worker = Worker(settings, runs_at_once=RUNS_AT_ONCE, poll_s=0.2, once=True)
        stats = await worker.run()
        return dict(stats.finished)

    return asyncio.run(go())


def worker_throughput(b: Bench) -> ScenarioResult:
    runs, nodes = b.sizes.worker_runs, b.sizes.worker_run_nodes
    res = ScenarioResult(
        "worker",
        params={
            "runs": runs,
            "nodes_per_run": nodes,
            "runs_at_once": RUNS_AT_ONCE,
            "baseline": "client.resume",
        },
    )
    if missing(res, "worker", METRICS):
        b.log("[worker] worker_throughput_ratio: null (not implemented yet)")
        return res
    state = "bench_worker"
    settings = Settings(dsn=b.dsn, schema=state)
    client = Client(settings)
    flow = flows.sequential(nodes)
    try:
        for rep in range(b.sizes.reps):
            sides = ["worker", "sequential"] if rep % 2 == 0 else ["sequential", "worker"]
            for side in sides:
                ids = _queue(client, flow, runs)
                flows.clear_compile_caches()  # both sides start cold, then reuse what they compile
                if side == "worker":
                    worker_s, finished = timed(lambda: _drain(settings))
                    if finished.get("completed") != runs:
                        raise RuntimeError(f"the worker finished {finished}, expected {runs} completed")
                    res.sample("worker_s", worker_s)
                else:

                    def one_by_one(ids: list[str] = ids) -> None:
                        for run_id in ids:
                            expect(client.resume(run_id), "completed", nodes)

                    res.sample("sequential_resume_s", timed(one_by_one)[0])
            w, s = res.stats["worker_s"].values[-1], res.stats["sequential_resume_s"].values[-1]
            b.log(
                f"[worker] rep {rep + 1}/{b.sizes.reps}: {runs} runs by a worker {w:.2f}s "
                f"({runs / w:.0f} runs/s), one by one {s:.2f}s ({runs / s:.0f} runs/s), ratio {s / w:.2f}"
            )
    finally:
        drop_schemas(b.dsn, state)
    # A throughput ratio: the time one by one over the worker's time (> 1: the worker is faster).
    res.stats["ratio"] = paired_ratios(res.stats["sequential_resume_s"], res.stats["worker_s"])
    res.metrics["worker_throughput_ratio"] = res.stats["ratio"].median
    res.metrics["worker_runs_per_s"] = runs / res.stats["worker_s"].median
    return res
