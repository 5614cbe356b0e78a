"""Profile one scenario's hot path: ``python -m bench.profile per_node [--n 2000] [--html out.html]``.

Prints pyinstrument's call tree (wall clock, so time spent waiting on the server shows up as
the event loop's ``select``) and how many statements the client sent per node. Needs
``pip install '.[bench]'``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import psycopg

from bench import flows
from bench.db import database, drop_schemas, fresh_schema
from dbt_durable.api import Client
from dbt_durable.config import Settings


@contextmanager
def count_statements() -> Iterator[Counter[str]]:
    """Count round trips (cursor ``execute`` calls and lanes' ``Wire.query``) and new connections."""
    counts: Counter[str] = Counter()
    saved: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, name: str, label: str, is_async: bool) -> None:
        raw = owner.__dict__[name]
        saved.append((owner, name, raw))
        original = getattr(owner, name)  # for a classmethod: bound to ``owner``
        offset = 1 if isinstance(raw, classmethod) else 0  # drop ``cls``; ``original`` is bound

        async def acall(*args: Any, **kwargs: Any) -> Any:
            counts[label] += 1
            return await original(*args[offset:], **kwargs)

        def scall(*args: Any, **kwargs: Any) -> Any:
            counts[label] += 1
            return original(*args[offset:], **kwargs)

        wrapper: Any = acall if is_async else scall
        setattr(owner, name, classmethod(wrapper) if offset else wrapper)

    from dbt_durable.runner.wire import Wire

    wrap(Wire, "query", "lane_round_trip", True)  # a lane's steps bypass the cursor (psycopg.pq)
    wrap(psycopg.AsyncCursor, "execute", "async_execute", True)
    wrap(psycopg.Cursor, "execute", "sync_execute", False)
    wrap(psycopg.AsyncConnection, "connect", "async_connect", True)
    wrap(psycopg.Connection, "connect", "sync_connect", False)
    try:
        yield counts
    finally:
        for owner, name, raw in saved:
            setattr(owner, name, raw)


def _prepared(dsn: str, target: str, n: int) -> tuple[Callable[[], Any], Callable[[], None]]:
    """(the code to profile, its cleanup) for ``target``."""
    schema = f"bench_profile_{target}"
    client = Client(Settings(dsn=dsn, schema=schema))
    if target == "per_node":
        started = client.start(flows.sequential(n), wait=False)
        return (lambda: client.resume(started.run_id)), (lambda: drop_schemas(dsn, schema))
    if target == "fanout":
        client = Client(Settings(dsn=dsn, schema=schema, concurrency=8))
        started = client.start(flows.fanout(n, 0.01), wait=False)
        return (lambda: client.resume(started.run_id)), (lambda: drop_schemas(dsn, schema))
    if target == "resume":
        work = "bench_profile_work"
        fresh_schema(dsn, work)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {work}.gate (x int)")
            started = client.start(flows.sequential(n, f"'SELECT 1/(SELECT count(*) FROM {work}.gate)'"))
            conn.execute(f"INSERT INTO {work}.gate VALUES (1)")
        return (lambda: client.resume(started.run_id)), (lambda: drop_schemas(dsn, schema, work))
    if target == "dbos":
        from bench.baselines import DbosFlow

        other = DbosFlow(dsn, "bench_profile_dbos")
        other.run(10)  # warm-up
        return (lambda: other.run(n)), other.close
    if target == "worker":  # one in-process worker drains n queued one-node runs
        import asyncio

        from bench.workers import RUNS_AT_ONCE, queue
        from dbt_durable.runner.worker import Worker

        settings = Settings(dsn=dsn, schema=schema)
        queue(settings, n)
        worker = Worker(settings, runs_at_once=RUNS_AT_ONCE, poll_s=0.2, once=True)
        return (lambda: asyncio.run(worker.run())), (lambda: drop_schemas(dsn, schema))
    if target == "graph":
        from dbt_durable.graph.build import compile_flow

        text, _ = flows.planning(n)
        return (lambda: compile_flow(text)), (lambda: None)
    raise SystemExit(f"unknown target {target!r}")


DEFAULT_N = {
    "per_node": 2000,
    "fanout": 1000,
    "resume": 10_000,
    "graph": 20_000,
    "dbos": 2000,
    "worker": 2000,
}


def _package(filename: str, name: str) -> str:
    """The bucket of one profiled function: waiting, or the package whose code ran."""
    if "epoll" in name or "select.select" in name or filename.endswith("selectors.py"):
        return "waiting for Postgres (epoll)"
    if "/dbt_durable/" in filename:
        sub = filename.split("/dbt_durable/", 1)[1].split("/", 1)[0]
        return "dbt_durable planning (flow, graph)" if sub in ("flow", "graph") else f"dbt_durable {sub}"
    for package in (
        "dbt_durable",
        "psycopg_pool",
        "psycopg",
        "asyncio",
        "networkx",
        "json",
        "sqlalchemy",
        "dbos",
    ):
        if f"/{package}/" in filename:
            return package
    return "other (builtins, stdlib)"


def by_package(code: Callable[[], Any], n: int) -> str:
    """Own time per package under cProfile (inflated by the profiler; compare shares, not totals)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.runcall(code)
    own: Counter[str] = Counter()
    stats: dict[Any, Any] = cast(Any, pstats.Stats(prof)).stats
    for (filename, _line, name), (_cc, _nc, tottime, _ct, _callers) in stats.items():
        own[_package(filename, name)] += tottime
    total = sum(own.values())
    lines = [f"{'bucket':<36} {'own s':>8} {'us/node':>8} {'share':>6}"]
    for bucket, seconds in own.most_common():
        lines.append(f"{bucket:<36} {seconds:8.3f} {seconds / n * 1e6:8.0f} {seconds / total:6.1%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.profile", description=__doc__.splitlines()[0] if __doc__ else ""
    )
    p.add_argument("target", choices=list(DEFAULT_N))
    p.add_argument("--n", type=int, help="nodes (default: the full benchmark's size)")
    p.add_argument("--dsn", help="use this database instead of starting an embedded one")
    p.add_argument("--html", type=Path, help="also write pyinstrument's HTML report here")
    p.add_argument("--interval", type=float, default=0.001, help="sampling interval in seconds")
    p.add_argument(
        "--by-package",
        action="store_true",
        help="also: own time per package (cProfile), wall and CPU unprofiled",
    )
    args = p.parse_args(argv)
    try:
        from pyinstrument import Profiler
    except ImportError:
        print("pyinstrument is not installed: pip install '.[bench]'", file=sys.stderr)
        return 2
    n = args.n or DEFAULT_N[args.target]
    with database(args.dsn) as dsn:
        if args.by_package:
            for label in ("unprofiled", "cProfile"):
                code, cleanup = _prepared(dsn, args.target, n)
                try:
                    flows.clear_compile_caches()
                    if label == "unprofiled":
                        wall, cpu = time.perf_counter(), time.process_time()
                        code()
                        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                        print(
                            f"{args.target} unprofiled: n={n}, {wall / n * 1e6:.0f} us/node wall, "
                            f"{cpu / n * 1e6:.0f} us/node CPU in this process"
                        )
                    else:
                        print(by_package(code, n))
                finally:
                    cleanup()
        code, cleanup = _prepared(dsn, args.target, n)
        try:
            profiler = Profiler(interval=args.interval, async_mode="disabled")
            flows.clear_compile_caches()  # profile what a new process pays
            with count_statements() as counts:
                start = time.perf_counter()
                profiler.start()
                code()
                profiler.stop()
                elapsed = time.perf_counter() - start
        finally:
            cleanup()
    print(profiler.output_text(unicode=True, color=False, show_all=False))
    print(f"{args.target}: n={n}, {elapsed:.3f}s wall, {elapsed / n * 1e6:.0f} us/node")
    for label, count in sorted(counts.items()):
        print(f"  {label}: {count} ({count / n:.3f} per node)")
    if args.html:
        args.html.write_text(profiler.output_html())
    return 0


if __name__ == "__main__":
    sys.exit(main())
