"""One worker process of another job queue: ``python -m bench.queue_process SYSTEM DSN``.

``SYSTEM`` is ``procrastinate`` (DSN: its database) or ``dbos`` (DSN: the database the job
writes to; the DBOS system database is named by ``--system-dsn``). Like
``bench.worker_process``, it imports everything, prints ``ready``, and starts working when its
standard input closes. Each job is one step, ``INSERT INTO bench_queue.done DEFAULT VALUES``,
the same step the dbt-durable runs execute. In flight per process: ``CONCURRENCY``, as
``runs_at_once`` for the dbt-durable workers.

procrastinate's worker runs with ``wait=False`` (it exits once the queue is empty); a DBOS
process runs until terminated.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

CONCURRENCY = 4
DONE_SQL = "INSERT INTO bench_queue.done DEFAULT VALUES"
DBOS_QUEUE = "bench_queue"
DBOS_APP_VERSION = "bench"
DBOS_APP_NAME = "dbt-durable-bench-queue"
DBOS_WORKFLOW = "run_dbos.<locals>.bench_job"  # DBOS names a workflow by its __qualname__
# DBOS polls its queue every second by default, which caps it at CONCURRENCY jobs per second
# per process here; a short interval gives it its best throughput.
DBOS_POLLING_INTERVAL_S = 0.01


def procrastinate_app(dsn: str):
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name="bench_job")
    async def bench_job() -> None:
        await app.connector.execute_query_async(DONE_SQL)

    return app


def run_procrastinate(dsn: str) -> None:
    app = procrastinate_app(dsn)
    print("ready", flush=True)
    sys.stdin.read()
    app.run_worker(concurrency=CONCURRENCY, wait=False, install_signal_handlers=False)


def dbos_config(system_dsn: str) -> dict[str, object]:
    return {
        "name": DBOS_APP_NAME,
        "system_database_url": system_dsn,
        "application_version": DBOS_APP_VERSION,
        "log_level": "WARNING",
    }


def run_dbos(dsn: str, system_dsn: str) -> None:
    from dbos import DBOS
    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(dsn, min_size=CONCURRENCY, max_size=CONCURRENCY, kwargs={"autocommit": True})

    @DBOS.step()
    def bench_step() -> None:
        with pool.connection() as conn:
            conn.execute(DONE_SQL)

    @DBOS.workflow()
    def bench_job() -> None:
        bench_step()

    assert bench_job.__qualname__ == DBOS_WORKFLOW

    DBOS(config=dbos_config(system_dsn))  # type: ignore[arg-type]
    print("ready", flush=True)
    sys.stdin.read()
    DBOS.launch()
    DBOS.register_queue(  # it is stored in the system database, so after the launch
        DBOS_QUEUE, worker_concurrency=CONCURRENCY, polling_interval_sec=DBOS_POLLING_INTERVAL_S
    )
    while True:  # the queue runs in DBOS's threads; the harness terminates this process
        time.sleep(1)


def migrate_dbos(system_dsn: str) -> None:
    """Create DBOS's system database tables (a launch does it), with no queue registered."""
    from dbos import DBOS

    DBOS(config=dbos_config(system_dsn))  # type: ignore[arg-type]
    DBOS.launch()
    DBOS.destroy(destroy_registry=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.queue_process")
    p.add_argument("system", choices=["procrastinate", "dbos", "dbos-migrate"])
    p.add_argument("dsn")
    p.add_argument("--system-dsn")
    args = p.parse_args(argv)
    if args.system == "procrastinate":
        run_procrastinate(args.dsn)
    elif args.system == "dbos-migrate":
        migrate_dbos(args.system_dsn)
    else:
        run_dbos(args.dsn, args.system_dsn)
    return 0


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    sys.exit(main())
