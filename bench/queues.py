"""The same queued one-step jobs drained by 4 worker processes of dbt-durable, procrastinate
and DBOS queues, side by side in each repetition.

Every system's job is one step, ``INSERT INTO bench_queue.done DEFAULT VALUES`` (a row
stamped with ``clock_timestamp()``), so one clock and one measure serve all three: the drain
rate is ``(N - 1) ÷ (last row's time − first row's time)``, read from the ``done`` table, on the
server's clock. Process start-up is outside it (every process imports its library first and
starts when released), and so is queueing. Every repetition checks that exactly N rows
arrived (none lost, none twice). 4 processes each, 4 jobs in flight per process
(``runs_at_once=4``, procrastinate ``concurrency=4``, DBOS ``worker_concurrency=4``).

- dbt-durable: ``python -m bench.worker_process`` (``Worker(once=True)``) over N runs of the
  flow ``'INSERT INTO bench_queue.done DEFAULT VALUES'``, queued as ``client.start`` does.
- procrastinate: a database of its own on the same server (``bench_procrastinate``, its schema
  applied), N jobs deferred with ``batch_defer``; its workers run with ``wait=False``.
- DBOS: its system database is a database of its own (``bench_dbos_queue``); N workflows of one
  ``@DBOS.step`` enqueued with ``DBOSClient`` on a queue polled every 10 ms (the default, 1 s,
  caps it at 4 jobs per second per process).
"""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import ExitStack
from typing import Any

import psycopg
from psycopg import sql

from bench.db import connect, drop_schemas
from bench.queue_process import (
    DBOS_APP_NAME,
    DBOS_APP_VERSION,
    DBOS_QUEUE,
    DBOS_WORKFLOW,
    DONE_SQL,
    procrastinate_app,
)
from bench.result import Bench, ScenarioResult
from bench.stats import paired_ratios
from bench.workers import PROCESSES, REPO, RUNS_AT_ONCE
from dbt_durable.api import Client
from dbt_durable.config import Settings
from dbt_durable.graph.build import compile_flow
from dbt_durable.store.queries import Queries
from dbt_durable.store.runs import new_run_params

METRICS = [
    "queue_ratio_vs_procrastinate",
    "queue_ratio_vs_dbos",
    "queue_runs_per_s",
    "queue_procrastinate_jobs_per_s",
    "queue_dbos_jobs_per_s",
]
STATE_SCHEMA = "bench_queue_state"
PROCRASTINATE_DB, DBOS_DB = "bench_procrastinate", "bench_dbos_queue"
FLOW = f"'{DONE_SQL}'"
DRAIN_TIMEOUT_S = 300.0


def _with_database(dsn: str, database: str) -> str:
    return psycopg.conninfo.make_conninfo(dsn, dbname=database)


def _fresh_database(dsn: str, database: str) -> str:
    with connect(dsn) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    return _with_database(dsn, database)


def _drop_database(dsn: str, database: str) -> None:
    with connect(dsn) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


def _fresh_done(dsn: str) -> None:
    with connect(dsn) as conn:
        conn.execute("DROP SCHEMA IF EXISTS bench_queue CASCADE")
        conn.execute("CREATE SCHEMA bench_queue")
        conn.execute("CREATE TABLE bench_queue.done (at timestamptz NOT NULL DEFAULT clock_timestamp())")


def _done(dsn: str) -> tuple[int, float | None]:
    with connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*), extract(epoch FROM max(at) - min(at))::float8 FROM bench_queue.done"
        ).fetchone()
    return (int(row[0]), row[1]) if row else (0, None)


def _drain(cmds: list[list[str]], done_dsn: str, jobs: int, what: str) -> float:
    """Start the processes, release them together, wait until ``jobs`` rows are done, stop them.

    Returns the drain time from the ``done`` table; raises if a process fails or rows are
    missing or duplicated.
    """
    with ExitStack() as stack:
        logs = [stack.enter_context(open("/dev/null", "w")) for _ in cmds]
        procs = [
            subprocess.Popen(
                cmd,
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for cmd, _ in zip(cmds, logs, strict=True)
        ]
        try:
            for proc in procs:
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != "ready":
                    proc.kill()
                    raise RuntimeError(
                        f"{what} worker did not start: {(proc.stderr.read() if proc.stderr else '')[-1500:]}"
                    )
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.close()  # go
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while True:
                count, _ = _done(done_dsn)
                if count >= jobs:
                    break
                failed = [p for p in procs if p.poll() not in (None, 0)]
                if failed or time.monotonic() > deadline or all(p.poll() is not None for p in procs):
                    err = failed[0].stderr.read()[-1500:] if failed and failed[0].stderr else ""
                    raise RuntimeError(f"{what}: {count} of {jobs} jobs done; {err}")
                time.sleep(0.1)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                for pipe in (proc.stdin, proc.stdout, proc.stderr):
                    if pipe is not None and not pipe.closed:
                        pipe.close()
    time.sleep(0.2)  # a job still finishing as the processes stop would show as a duplicate
    count, span = _done(done_dsn)
    if count != jobs or span is None:
        raise RuntimeError(f"{what}: {count} jobs done, expected exactly {jobs}")
    return float(span)


def _dbt_durable(b: Bench, jobs: int) -> float:
    settings = Settings(dsn=b.dsn, schema=STATE_SCHEMA)
    drop_schemas(b.dsn, STATE_SCHEMA)
    Client(settings).migrate()
    _fresh_done(b.dsn)
    params = new_run_params(compile_flow(FLOW), "bench_queue", None, {})
    with connect(b.dsn) as conn, conn.transaction():
        conn.cursor().executemany(Queries(STATE_SCHEMA).create_run, [params] * jobs)
    cmd = [sys.executable, "-m", "bench.worker_process", b.dsn, STATE_SCHEMA, str(RUNS_AT_ONCE), "/dev/null"]
    return _drain([cmd] * PROCESSES, b.dsn, jobs, "dbt-durable")


def _procrastinate(b: Bench, jobs: int) -> float:
    dsn = _fresh_database(b.dsn, PROCRASTINATE_DB)
    _fresh_done(dsn)
    app = procrastinate_app(dsn)
    with app.open():
        app.schema_manager.apply_schema()
        task = app.tasks["bench_job"]
        task.batch_defer(*([{}] * jobs))
    cmd = [sys.executable, "-m", "bench.queue_process", "procrastinate", dsn]
    return _drain([cmd] * PROCESSES, dsn, jobs, "procrastinate")


def _dbos(b: Bench, jobs: int) -> float:
    from dbos import DBOSClient

    system_dsn = _fresh_database(b.dsn, DBOS_DB)
    _fresh_done(b.dsn)
    url = _sqlalchemy_url(system_dsn)
    subprocess.run(
        [sys.executable, "-m", "bench.queue_process", "dbos-migrate", b.dsn, "--system-dsn", url],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=300,
    )
    client = DBOSClient(system_database_url=url)
    try:
        for _ in range(jobs):
            client.enqueue(
                {
                    "queue_name": DBOS_QUEUE,
                    "workflow_name": DBOS_WORKFLOW,
                    "app_version": DBOS_APP_VERSION,
                    "application_name": DBOS_APP_NAME,
                }
            )
    finally:
        client.destroy()
    cmd = [sys.executable, "-m", "bench.queue_process", "dbos", b.dsn, "--system-dsn", url]
    return _drain([cmd] * PROCESSES, b.dsn, jobs, "DBOS")


def _sqlalchemy_url(dsn: str) -> str:
    from sqlalchemy.engine import make_url

    params = psycopg.conninfo.conninfo_to_dict(dsn)
    return str(make_url(_postgres_url(params)).render_as_string(hide_password=False))


def _postgres_url(params: dict[str, Any]) -> str:
    host = params.get("host", "")
    user = params.get("user", "postgres")
    db = params.get("dbname", "postgres")
    port = params.get("port")
    if str(host).startswith("/"):
        return f"postgresql://{user}@/{db}?host={host}" + (f"&port={port}" if port else "")
    return f"postgresql://{user}@{host}{':' + str(port) if port else ''}/{db}"


def queues(b: Bench) -> ScenarioResult:
    """Drain rates of dbt-durable, procrastinate and DBOS queues over the same jobs."""
    jobs = b.sizes.queue_jobs
    res = ScenarioResult(
        "queues",
        params={
            "jobs": jobs,
            "processes": PROCESSES,
            "in_flight_per_process": RUNS_AT_ONCE,
            "job": DONE_SQL,
            "dbos_polling_interval_s": 0.01,
        },
    )
    if b.sizes.queue_reps == 0:
        res.skip(METRICS, f"not run in --{b.sizes.mode} (process start-up alone exceeds its time budget)")
        return res
    others: dict[str, Any] = {}
    for name, module in (("procrastinate", "procrastinate"), ("dbos", "dbos")):
        try:
            __import__(module)
            others[name] = _procrastinate if name == "procrastinate" else _dbos
        except ImportError as exc:
            res.skip([f"queue_ratio_vs_{name}", f"queue_{name}_jobs_per_s"], f"{exc}; pip install '.[bench]'")
    try:
        for rep in range(b.sizes.queue_reps):
            order = ["dbt_durable", *others]
            order = order[rep % len(order) :] + order[: rep % len(order)]
            spans: dict[str, float] = {}
            for side in order:
                span = _dbt_durable(b, jobs) if side == "dbt_durable" else others[side](b, jobs)
                res.sample(f"{side}_drain_s", span)
                spans[side] = span
            b.log(
                f"[queues] rep {rep + 1}/{b.sizes.queue_reps}: "
                + ", ".join(f"{k} {(jobs - 1) / v:.0f} jobs/s" for k, v in spans.items())
            )
    finally:
        drop_schemas(b.dsn, STATE_SCHEMA, "bench_queue")
        _drop_database(b.dsn, PROCRASTINATE_DB)
        _drop_database(b.dsn, DBOS_DB)
    ours = res.stats["dbt_durable_drain_s"]
    res.metrics["queue_runs_per_s"] = (jobs - 1) / ours.median
    for name in others:
        # A rate ratio: (jobs / our drain time) over (jobs / their drain time).
        res.stats[f"ratio_vs_{name}"] = paired_ratios(res.stats[f"{name}_drain_s"], ours)
        res.metrics[f"queue_ratio_vs_{name}"] = res.stats[f"ratio_vs_{name}"].median
        res.metrics[f"queue_{name}_jobs_per_s"] = (jobs - 1) / res.stats[f"{name}_drain_s"].median
    return res
