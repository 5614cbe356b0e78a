"""Worker throughput: worker processes drain queued one-node runs vs the raw-commit loop."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from psycopg import sql

from bench import flows
from bench.baselines import RawCommitLoop
from bench.db import connect, drop_schemas, fresh_schema, server_counters
from bench.pending import missing
from bench.pg15 import pg15_server, unavailable
from bench.result import Bench, ScenarioResult
from bench.stats import paired_ratios, percentile, sides, timed
from dbt_durable.api import Client
from dbt_durable.config import Settings
from dbt_durable.graph.build import compile_flow
from dbt_durable.store.queries import Queries
from dbt_durable.store.runs import new_run_params

METRICS = [
    "worker_throughput_ratio",
    "worker_runs_per_s",
    "worker_claim_latency_p50_ms",
    "worker_claim_latency_p95_ms",
    "worker_wal_bytes_per_run",
    "worker_raw_wal_bytes_per_commit",
    "worker_commits_per_run",
    "worker_statements_per_run",
]
CENSUS_METRICS = ["worker_statements_per_run", "worker_raw_statements_per_commit"]
PROCESSES = 4
RUNS_AT_ONCE = 4  # per process: the default of `dbt-durable worker`
STATE_SCHEMA, WORK_SCHEMA = "bench_worker", "bench_worker_raw"
REPO = Path(__file__).resolve().parents[1]
EXIT_TIMEOUT_S = 600.0
LOG_TAIL_CHARS = 1500


@dataclass(frozen=True)
class Drain:
    """One drain of the queue by the worker processes."""

    wall_s: float  # from spawning the processes to the last exit: start-up included
    drain_s: float  # max(finished_at) - min(started_at) of the runs (the server's clock)
    claim_latencies_s: list[float]  # every claim that returned a run, of every process
    runs_per_process: list[int]
    in_batches: int  # runs the short-run path executed (WorkerStats.in_batches, summed)
    batch_statements: int  # statements that path counted itself (WorkerStats.batch_statements)


def queue(settings: Settings, runs: int) -> None:
    """A fresh state schema holding ``runs`` pending runs of ``'SELECT 1'``.

    Each row is what ``client.start(flow, wait=False)`` creates (``new_run_params`` and
    ``Queries.create_run``), all in one transaction.
    """
    drop_schemas(settings.dsn, settings.schema)
    Client(settings).migrate()
    params = new_run_params(compile_flow(flows.TRIVIAL), "bench_worker", None, {})
    with connect(settings.dsn) as conn, conn.transaction():
        conn.cursor().executemany(Queries(settings.schema).create_run, [params] * runs)


def _spawn(settings: Settings, out: Path, log: IO[str]) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "bench.worker_process", settings.dsn, settings.schema]
    cmd += [str(RUNS_AT_ONCE), str(out)]
    return subprocess.Popen(
        cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
    )


def _tail(log: IO[str]) -> str:
    log.seek(0)
    return log.read()[-LOG_TAIL_CHARS:]


def _failure(proc: subprocess.Popen[str], log: IO[str], what: str) -> RuntimeError:
    return RuntimeError(f"worker process {proc.pid} {what}: {_tail(log)}")


def _run_processes(settings: Settings, folder: Path) -> list[dict[str, Any]]:
    """Start ``PROCESSES`` workers, release them together once all are ready, and wait for them.

    Returns each process's stats, with the tail of its log as ``log``; raises if one fails
    (the others are killed).
    """
    outs = [folder / f"worker{i}.json" for i in range(PROCESSES)]
    with ExitStack() as stack:
        logs = [stack.enter_context(open(folder / f"worker{i}.log", "w+")) for i in range(PROCESSES)]
        procs = [_spawn(settings, out, log) for out, log in zip(outs, logs, strict=True)]
        try:
            for proc, log in zip(procs, logs, strict=True):
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != "ready":
                    raise _failure(proc, log, "did not start")
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.close()  # go
            for proc, log in zip(procs, logs, strict=True):
                if proc.wait(timeout=EXIT_TIMEOUT_S) != 0:
                    raise _failure(proc, log, f"exited with {proc.returncode}")
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                for pipe in (proc.stdin, proc.stdout):
                    if pipe is not None:
                        pipe.close()
        return [
            {**json.loads(out.read_text()), "log": _tail(log)} for out, log in zip(outs, logs, strict=True)
        ]


def drain(settings: Settings, runs: int) -> Drain:
    """The worker processes drain the queue; raises unless each run completed exactly once."""
    with tempfile.TemporaryDirectory(prefix="dbt-durable-bench-workers-") as tmp:
        wall_s, stats = timed(lambda: _run_processes(settings, Path(tmp)))
    completed = [s["finished"].get("completed", 0) for s in stats]
    claimed = sum(s["claimed"] for s in stats)
    if sum(completed) != runs or claimed != runs:
        logs = "".join(s["log"] for s in stats)[-LOG_TAIL_CHARS:]
        raise RuntimeError(
            f"the workers claimed {claimed} runs and finished {[s['finished'] for s in stats]}, "
            f"expected {runs} completed; their logs end: {logs}"
        )
    latencies = [x for s in stats for x in s["claim_latencies_s"]]
    return Drain(
        wall_s,
        _checked_drain_s(settings, runs),
        latencies,
        completed,
        sum(s.get("in_batches", 0) for s in stats),
        sum(s.get("batch_statements", 0) for s in stats),
    )


def _checked_drain_s(settings: Settings, runs: int) -> float:
    """Seconds from the first run's start to the last run's finish, read from the runs table,
    after checking that every run completed and that each run's one node completed once."""
    s = sql.Identifier(settings.schema)
    with connect(settings.dsn) as conn:
        done, total, drain_s = conn.execute(
            sql.SQL(
                "SELECT count(*) FILTER (WHERE status = 'completed'), count(*),"
                " extract(epoch FROM max(finished_at) - min(started_at))::float8 FROM {}.runs"
            ).format(s)
        ).fetchone() or (0, 0, None)
        nodes, distinct, attempts = conn.execute(
            sql.SQL(
                "SELECT count(*), count(DISTINCT run_id), coalesce(max(attempts), 0)"
                " FROM {}.nodes WHERE status = 'completed'"
            ).format(s)
        ).fetchone() or (0, 0, 0)
    if not done == total == nodes == distinct == runs or attempts != 1 or drain_s is None:
        raise RuntimeError(
            f"{done} of {total} runs completed, {nodes} nodes completed in {distinct} runs "
            f"(max attempts {attempts}), expected {runs} runs of one node each, one attempt"
        )
    return float(drain_s)


def _measure(b: Bench, res: ScenarioResult, settings: Settings, raw: RawCommitLoop, rep: int) -> None:
    """One side-by-side pair: a drain by the worker processes and the raw loop's ``runs`` commits."""
    runs = b.sizes.worker_runs
    for side in sides(rep, "workers", "raw"):
        if side == "raw":
            with connect(settings.dsn) as probe:
                before = server_counters(probe)
                res.sample("raw_commit_s", timed(lambda: raw.run(runs))[0])
                raw.flush_stats()
                after = server_counters(probe)
            res.sample("raw_wal_bytes_per_commit", (after["wal_bytes"] - before["wal_bytes"]) / runs)
            res.sample("raw_commits_per_commit", (after["commits"] - before["commits"]) / runs)
            continue
        queue(settings, runs)
        with connect(settings.dsn) as probe:
            before = server_counters(probe)
            d = drain(settings, runs)
            after = server_counters(probe)
        res.sample("workers_wal_bytes_per_run", (after["wal_bytes"] - before["wal_bytes"]) / runs)
        res.sample("workers_commits_per_run", (after["commits"] - before["commits"]) / runs)
        if d.in_batches:
            res.sample("batch_statements_per_run_client_count", d.batch_statements / d.in_batches)
        res.sample("runs_in_batches", d.in_batches)
        res.sample("workers_drain_s", d.drain_s)
        res.sample("workers_wall_s", d.wall_s)
        res.sample("claim_p50_ms", percentile(d.claim_latencies_s, 50) * 1e3)
        res.sample("claim_p95_ms", percentile(d.claim_latencies_s, 95) * 1e3)
        res.sample("claims", len(d.claim_latencies_s))
        res.notes[f"runs_per_process_rep{rep + 1}"] = d.runs_per_process
    w, r = res.stats["workers_drain_s"].values[-1], res.stats["raw_commit_s"].values[-1]
    b.log(
        f"[worker] rep {rep + 1}/{b.sizes.reps}: {runs} runs drained in {w:.2f}s ({runs / w:.0f} runs/s; "
        f"{res.stats['workers_wall_s'].values[-1]:.2f}s with start-up), raw commits {r:.2f}s "
        f"({runs / r:.0f}/s), ratio {r / w:.3f}; claim p50 {res.stats['claim_p50_ms'].values[-1]:.2f} ms, "
        f"p95 {res.stats['claim_p95_ms'].values[-1]:.2f} ms"
    )


def worker_throughput(b: Bench) -> ScenarioResult:
    """Drain rate of ``PROCESSES`` worker processes ÷ the raw-commit loop's commit rate."""
    runs = b.sizes.worker_runs
    res = ScenarioResult(
        "worker",
        params={
            "runs": runs,
            "flow": flows.TRIVIAL,
            "processes": PROCESSES,
            "runs_at_once_per_process": RUNS_AT_ONCE,
            "baseline": "RawCommitLoop: runs x (BEGIN; SELECT 1; INSERT checkpoint; COMMIT)",
        },
    )
    if missing(res, "worker", METRICS):
        b.log("[worker] worker_throughput_ratio: null (not implemented yet)")
        return res
    settings = Settings(dsn=b.dsn, schema=STATE_SCHEMA)
    fresh_schema(b.dsn, WORK_SCHEMA)
    raw = RawCommitLoop(b.dsn, WORK_SCHEMA)
    try:  # no warm-up: every drain starts new processes on a fresh schema anyway
        for rep in range(b.sizes.reps):
            _measure(b, res, settings, raw, rep)
    finally:
        raw.close()
        drop_schemas(b.dsn, STATE_SCHEMA, WORK_SCHEMA)
    # A rate ratio: (runs / drain time) over (runs / raw time); below 1, the raw loop is faster.
    res.stats["ratio"] = paired_ratios(res.stats["raw_commit_s"], res.stats["workers_drain_s"])
    res.metrics["worker_throughput_ratio"] = res.stats["ratio"].median
    res.metrics["worker_runs_per_s"] = runs / res.stats["workers_drain_s"].median
    res.metrics["worker_runs_per_s_with_start"] = runs / res.stats["workers_wall_s"].median
    res.metrics["worker_raw_commits_per_s"] = runs / res.stats["raw_commit_s"].median
    res.metrics["worker_claim_latency_p50_ms"] = res.stats["claim_p50_ms"].median
    res.metrics["worker_claim_latency_p95_ms"] = res.stats["claim_p95_ms"].median
    res.metrics["worker_wal_bytes_per_run"] = res.stats["workers_wal_bytes_per_run"].median
    res.metrics["worker_raw_wal_bytes_per_commit"] = res.stats["raw_wal_bytes_per_commit"].median
    res.metrics["worker_commits_per_run"] = res.stats["workers_commits_per_run"].median
    if "batch_statements_per_run_client_count" in res.stats:
        res.metrics["worker_batch_statements_per_run_client_count"] = res.stats[
            "batch_statements_per_run_client_count"
        ].median
    statement_census(b, res)
    return res


def statement_census(b: Bench, res: ScenarioResult) -> None:
    """Statements per run, counted by the server: one more drain of the same queue, on a private
    PostgreSQL 15 with ``pg_stat_statements`` (track = top, utility statements included), so
    every statement a client sends counts once, each statement of a multi-statement string
    separately, and none that runs inside a function. The count covers everything the worker
    processes send from the go signal to their exit (their start-up and shutdown included).
    The raw loop is counted the same way, as a check of the method (it sends 4 per commit).
    """
    reason = unavailable()
    if reason:
        res.skip(CENSUS_METRICS, f"no server-side statement count: {reason}")
        return
    runs = b.sizes.worker_runs
    with pg15_server() as server:
        settings = Settings(dsn=server.dsn, schema=STATE_SCHEMA)
        queue(settings, runs)
        with connect(server.dsn) as probe:
            probe.execute("SELECT pg_stat_statements_reset()")
            with tempfile.TemporaryDirectory(prefix="dbt-durable-bench-census-") as tmp:
                stats = _run_processes(settings, Path(tmp))
            by_query = _statements(probe)  # before the checks below send their own queries
            _checked_drain_s(settings, runs)
            fresh_schema(server.dsn, WORK_SCHEMA)
            raw = RawCommitLoop(server.dsn, WORK_SCHEMA)
            # pg_stat_statements does not count a protocol-level prepared utility statement
            # (BEGIN, COMMIT) after its first execution, and psycopg prepares a statement from
            # its 6th use. The engine never prepares (prepare_threshold=None on all its
            # connections), so the raw loop is counted the same way.
            raw.conn.prepare_threshold = None
            try:
                probe.execute("SELECT pg_stat_statements_reset()")
                raw.run(runs)
                raw_total = sum(calls for _, calls in _statements(probe))
            finally:
                raw.close()
    total = sum(calls for _, calls in by_query)
    res.metrics["worker_statements_per_run"] = total / runs
    res.metrics["worker_raw_statements_per_commit"] = raw_total / runs
    res.notes["census"] = {
        "server": "PostgreSQL 15 (Debian), pg_stat_statements track=top, track_utility=on",
        "runs": runs,
        "statements": total,
        "runs_in_batches": sum(s.get("in_batches", 0) for s in stats),
        "batch_path_client_count": sum(s.get("batch_statements", 0) for s in stats),
        "top_statements": [[query[:160], calls] for query, calls in by_query[:15]],
    }
    b.log(
        f"[worker] census on PostgreSQL 15: {total} statements for {runs} runs "
        f"({total / runs:.2f} per run; {res.notes['census']['runs_in_batches']} runs in batches); raw loop {raw_total / runs:.2f} per commit"
    )


def _statements(conn: Any) -> list[tuple[str, int]]:
    """Top-level statements recorded since the last reset in this database, most called first
    (the harness's own reset and this query excluded)."""
    rows = conn.execute(
        "SELECT query, sum(calls)::bigint FROM pg_stat_statements"
        " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND toplevel AND query NOT ILIKE '%pg_stat_statements%'"
        " GROUP BY query ORDER BY 2 DESC"
    ).fetchall()
    return [(str(q), int(c)) for q, c in rows]
