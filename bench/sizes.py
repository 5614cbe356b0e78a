"""How big each scenario is in each mode (full, ``--quick``, ``--tiny``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Sizes:
    """Workload sizes and repetition counts; every scenario runs at least 3 repetitions."""

    mode: str
    reps: int  # repetitions of each timed measurement (>= 3)
    graph_reps: int  # repetitions of the plan timings (the 100k plan is slow)
    per_node_n: int  # sequential trivial nodes vs the raw-commit loop
    dbos_n: int  # sequential trivial nodes vs DBOS Transact
    fanout_n: int  # joined pg_sleep nodes
    fanout_sleep_s: float
    fanout_concurrency: int
    graph_small_n: int  # "10k" plan
    graph_large_n: int  # "100k" plan
    resume_n: int  # nodes in the run resumed with one node left
    dbt_models: tuple[int, ...]  # a generated dbt project of each size (empty: skip the dbt scenario)
    dbt_reps: int  # repetitions of each dbt build pair (>= 3; a 200-model build takes ~10 s)
    dbt_warmup: bool  # one untimed dbt build of each project first (dbt's partial-parse cache)
    worker_runs: int  # queued one-node runs drained by the worker processes
    queue_jobs: int  # one-step jobs drained by dbt-durable, procrastinate and DBOS workers
    queue_reps: int  # repetitions of that triple (0: not run)
    chaos_phase_s: float  # each chaos cell: baseline, chaos and recovery phases of this length
    chaos_cells: tuple[str, ...]  # the cells run (the others are reported null, with a reason)
    chaos_rate: float  # runs queued per second by the chaos cells' producer
    loop_iterations: int  # iterations of the long loop
    loop_window: int  # iterations in each of its measured windows (first and last)
    warmup: bool  # one untimed run of each side before measuring

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = Sizes(
    mode="full",
    reps=7,
    graph_reps=3,
    per_node_n=2000,
    dbos_n=2000,
    fanout_n=1000,
    fanout_sleep_s=0.01,
    fanout_concurrency=8,
    graph_small_n=10_000,
    graph_large_n=100_000,
    resume_n=10_000,
    dbt_models=(50, 200),
    dbt_reps=5,
    dbt_warmup=True,
    worker_runs=2000,
    queue_jobs=2000,
    queue_reps=3,
    chaos_phase_s=5.0,
    chaos_cells=(
        "postgres_restart",
        "pg_backend_kill",
        "pool_exhaustion",
        "crash_recovery",
        "repeated_kills",
    ),
    chaos_rate=200.0,
    loop_iterations=100_000,
    loop_window=1000,
    warmup=True,
)

QUICK = Sizes(
    mode="quick",
    reps=3,
    graph_reps=3,
    per_node_n=2000,
    dbos_n=500,
    fanout_n=500,
    fanout_sleep_s=0.01,
    fanout_concurrency=8,
    graph_small_n=5_000,
    graph_large_n=15_000,
    resume_n=2_000,
    dbt_models=(10,),
    dbt_reps=3,
    dbt_warmup=False,
    worker_runs=500,
    queue_jobs=300,
    queue_reps=1,
    chaos_phase_s=2.0,
    chaos_cells=("postgres_restart", "crash_recovery"),  # the full run has all five
    chaos_rate=200.0,
    loop_iterations=2_000,
    loop_window=200,
    warmup=True,
)

TINY = Sizes(
    mode="tiny",
    reps=3,
    graph_reps=3,
    per_node_n=100,
    dbos_n=50,
    fanout_n=48,
    fanout_sleep_s=0.01,
    fanout_concurrency=8,
    graph_small_n=500,
    graph_large_n=2_000,
    resume_n=200,
    dbt_models=(),
    dbt_reps=3,
    dbt_warmup=False,
    worker_runs=40,
    queue_jobs=40,
    queue_reps=0,
    chaos_phase_s=1.0,
    chaos_cells=(),
    chaos_rate=100.0,
    loop_iterations=600,
    loop_window=100,
    warmup=False,
)


def pick(quick: bool, tiny: bool) -> Sizes:
    """``--tiny`` wins over ``--quick``."""
    if tiny:
        return TINY
    return QUICK if quick else FULL
