"""dbt-durable's benchmarks, each a ratio against a baseline measured in the same run.

``python -m bench [--quick | --tiny] [--json PATH] [--dsn DSN] [--only NAME ...]``. Baselines
run side by side with the runner, because the machine is shared and noisy. See
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench import (
    chaos,
    dbt_build,
    embedding,
    fanout,
    loops,
    memory,
    planning,
    queues,
    report,
    resume,
    scenarios,
    sqlcost,
    views,
    workers,
)
from bench.db import database, machine_facts
from bench.result import Bench, ScenarioResult
from bench.sizes import Sizes, pick

SCENARIOS: dict[str, Callable[[Bench], ScenarioResult]] = {
    "per_node": scenarios.per_node,
    "checkpoint_sql": sqlcost.checkpoint_sql,
    "dbos": scenarios.dbos,
    "fanout": fanout.fanout,
    "graph": planning.graph,
    "resume": resume.resume,
    "dbt_build": dbt_build.dbt_build_overhead,
    "worker": workers.worker_throughput,
    "memory": memory.result_cap_memory,
    "embedding_pipeline": embedding.embedding_pipeline,
    "views": views.views_at_scale,
    "queues": queues.queues,
    "loop": loops.loop_growth,
    "chaos": chaos.chaos,
}

# The headline metrics of each scenario, set to null with the error if the scenario breaks
# (a function of the sizes where the keys name the sizes).
PRODUCES: dict[str, list[str] | Callable[[Sizes], list[str]]] = {
    "per_node": [
        "per_node_ratio_vs_raw_commit",
        "per_node_ratio_with_start_vs_raw_commit",
        "per_node_ratio_vs_one_trip",
    ],
    "checkpoint_sql": ["sql_checkpoint_fn_us"],
    "dbos": scenarios.DBOS_METRICS,
    "fanout": ["fanout_efficiency"],
    "graph": ["graph_10k_plan_s", "graph_100k_plan_s", "graph_100k_peak_mb"],
    "resume": ["resume_ratio"],
    "dbt_build": dbt_build.metrics,
    "worker": workers.METRICS,
    "memory": memory.METRICS,
    "embedding_pipeline": embedding.METRICS,
    "views": views.METRICS,
    "queues": queues.METRICS,
    "loop": loops.METRICS,
    "chaos": chaos.METRICS,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.splitlines()[0] if __doc__ else ""
    )
    p.add_argument("--quick", action="store_true", help="smaller sizes; finishes in under 2 minutes")
    p.add_argument("--tiny", action="store_true", help="smoke-test sizes; finishes in about 20 seconds")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON to PATH")
    p.add_argument("--dsn", help="use this database instead of starting an embedded one")
    p.add_argument("--only", nargs="+", choices=list(SCENARIOS), help="run only these scenarios")
    return p.parse_args(argv)


def produces(name: str, sizes: Sizes) -> list[str]:
    """The headline keys of scenario ``name`` at these sizes."""
    keys = PRODUCES[name]
    return keys(sizes) if callable(keys) else keys


def run_one(b: Bench, name: str) -> ScenarioResult:
    start = time.perf_counter()
    b.log(f"[{name}] starting")
    try:
        res = SCENARIOS[name](b)
    except Exception as exc:  # one broken scenario must not lose the others' figures
        traceback.print_exc(file=sys.stderr)
        res = ScenarioResult(name)
        res.skip(produces(name, b.sizes), f"error: {type(exc).__name__}: {exc}")
    res.elapsed_s = time.perf_counter() - start
    report.print_scenario(sys.stdout, res)
    return res


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = pick(args.quick, args.tiny)
    logging.basicConfig(level=logging.WARNING)
    began = time.perf_counter()

    def log(message: str) -> None:
        print(f"{time.perf_counter() - began:7.1f}s {message}", flush=True)

    command = " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])])
    log(f"mode {sizes.mode}: {sizes.as_dict()}")
    results: list[ScenarioResult] = []
    with database(args.dsn) as dsn:
        meta = machine_facts(dsn, embedded=not args.dsn)
        log(
            f"{meta['nproc']} cores, load {meta['loadavg_at_start'][0]:.2f}; "
            f"{meta['postgres_version'].split(' on ')[0]}; fsync={meta['postgres_settings']['fsync']}"
        )
        b = Bench(dsn, sizes, log)
        for name in args.only or list(SCENARIOS):
            results.append(run_one(b, name))
    report.print_summary(sys.stdout, results)
    meta.update(
        {
            "command": command,
            "mode": sizes.mode,
            "sizes": sizes.as_dict(),
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "elapsed_s": round(time.perf_counter() - began, 1),
            "loadavg_at_end": list(os.getloadavg()),
        }
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.document(meta, results), indent=2, default=str) + "\n")
        log(f"wrote {args.json}")
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
