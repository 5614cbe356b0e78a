"""One benchmark worker process: ``python -m bench.worker_process DSN SCHEMA RUNS_AT_ONCE OUT [--forever]``.

It imports the engine, prints ``ready`` and waits for its standard input to close, so that
every worker of a measurement starts draining at the same moment, after its start-up. Then it
runs ``Worker(settings, once=True)`` until nothing is runnable and writes its stats to ``OUT``
as JSON (``claimed``, ``finished``, ``claim_latencies_s``, and the short-run path's
``in_batches`` and ``batch_statements``). With ``--forever`` (the chaos cells) it runs until
it is terminated or killed, and writes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from dbt_durable.config import Settings
from dbt_durable.runner.worker import Worker, WorkerStats

POLL_S = 0.2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.worker_process")
    p.add_argument("dsn")
    p.add_argument("schema")
    p.add_argument("runs_at_once", type=int)
    p.add_argument("out", type=Path)
    p.add_argument("--forever", action="store_true", help="no once: run until terminated")
    return p.parse_args(argv)


def stats_json(stats: WorkerStats) -> dict[str, object]:
    return {
        "claimed": stats.claimed,
        "finished": stats.finished,
        "claim_latencies_s": list(stats.claim_latencies_s),
        "in_batches": stats.in_batches,
        "batch_statements": stats.batch_statements,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings(dsn=args.dsn, schema=args.schema)
    print("ready", flush=True)
    sys.stdin.read()  # the go signal: the parent closes our stdin
    worker = Worker(settings, runs_at_once=args.runs_at_once, poll_s=POLL_S, once=not args.forever)
    stats = asyncio.run(worker.run())
    args.out.write_text(json.dumps(stats_json(stats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
