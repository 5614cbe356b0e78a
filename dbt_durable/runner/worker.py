"""``dbt-durable worker``: a long-running process that executes queued, due and orphaned runs.

Workers coordinate only through Postgres: a claim is one ``UPDATE ... WHERE run_id IN
(SELECT ... FOR UPDATE SKIP LOCKED)``, after which the runner takes the run's advisory lock and
lease as any runner does, so no node is ever executed by two workers at once. Workers wake on
``LISTEN``/``NOTIFY`` (new runs, signals) and also poll, so a missed notification only delays
work by one poll interval. A run that waits (sleep, schedule, signal) is parked: it holds no
connection and no task until it is due.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime

import psycopg
from psycopg_pool import PoolTimeout

from dbt_durable.config import Settings
from dbt_durable.errors import ConnectionFailed, DurableError, RunNotFound
from dbt_durable.graph.build import ROOT
from dbt_durable.runner.batch import MAX_BATCH, BatchOutcome, run_batch
from dbt_durable.runner.engine import Engine, Outcome
from dbt_durable.runner.lease import RunBusy
from dbt_durable.runner.schedules import fire_due_schedules
from dbt_durable.runner.tasks import cancel_and_wait
from dbt_durable.store.connect import APP_PREFIX, open_async, open_sync
from dbt_durable.store.migrate import migrate
from dbt_durable.store.pooler import refuse_transaction_pooling
from dbt_durable.store.status import RunStatus

log = logging.getLogger("dbt_durable.worker")

CHANNELS = ("dbt_durable_wake", "dbt_durable_signal")
CLAIM_LATENCIES_KEPT = 10_000
SCHEDULE_CHECK_S = 1.0
BATCH_SIZE = MAX_BATCH
RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 5.0


@dataclass
class WorkerStats:
    """What a worker has done: runs claimed, outcomes by status, and claim round trips.

    ``claim_latencies_s`` holds the wall time of each claim statement that returned at least
    one run (sent, executed, rows fetched), the latest ``CLAIM_LATENCIES_KEPT`` of them, so a
    long-lived worker's memory stays bounded.
    """

    claimed: int = 0
    finished: dict[str, int] = field(default_factory=dict)
    in_batches: int = 0  # runs executed by the short-run path (runner/batch.py)
    batch_statements: int = 0
    claim_latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=CLAIM_LATENCIES_KEPT))


class Worker:
    """Executes runs until stopped; with ``once``, until nothing is runnable right now."""

    def __init__(
        self,
        settings: Settings,
        runs_at_once: int = 4,
        poll_s: float = 5.0,
        park_after_s: float = 1.0,
        once: bool = False,
        on_outcome: Callable[[Outcome], None] | None = None,
        clock: Callable[[], datetime] | None = None,
        short_runs: bool = True,
    ):
        self.settings = replace(settings, park_after_s=park_after_s, claim_wait_s=0.0)
        self.runs_at_once = runs_at_once
        self.poll_s = poll_s
        self.once = once
        self.on_outcome = on_outcome
        self.clock = clock
        self.short_runs = short_runs  # one-step runs in shared transactions (runner/batch.py)
        self.stats = WorkerStats()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._fired_at = -SCHEDULE_CHECK_S
        self.last_loop_at: float | None = None  # event-loop time of the latest claim pass

    def stop(self) -> None:
        """Ask the worker to stop: running runs are interrupted and handed back at once."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> WorkerStats:
        # Sessions must be the worker's own (its locks are its runs' liveness): refuse a
        # transaction pooler at once, with a message that says what to change.
        await asyncio.to_thread(refuse_transaction_pooling, self.settings.dsn)
        with open_sync(self.settings.dsn) as conn:
            migrate(conn, self.settings.schema)
        async with Engine(self.settings, clock=self.clock) as engine:
            listening = asyncio.create_task(self._listen(engine))
            beating = asyncio.create_task(self._heartbeat(engine))
            active: set[asyncio.Task[None]] = set()
            try:
                await self._loop(engine, active)
            finally:
                await cancel_and_wait(active)
                await cancel_and_wait({listening, beating})
                await self._gone(engine)
        return self.stats

    async def _loop(self, engine: Engine, active: set[asyncio.Task[None]]) -> None:
        """Claim and start runs until stopped. A lost database (a restart, a failover, a
        terminated session) is waited out with backoff: the worker never exits because of it."""
        delay = RECONNECT_MIN_S
        while not self._stopping.is_set():
            self.last_loop_at = asyncio.get_running_loop().time()  # read by runner/health.py
            try:
                done = await self._pass(engine, active)
                delay = RECONNECT_MIN_S
            except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, ConnectionFailed) as exc:
                log.warning("worker lost the database (%s); retrying in %.1fs", exc, delay)
                await self._sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
                continue
            if done:
                return

    async def _sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if woken (a notification, a finished run, stop())."""
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass

    async def _pass(self, engine: Engine, active: set[asyncio.Task[None]]) -> bool:
        """One claim pass, then a wait for more work; True when a ``once`` worker is done."""
        assert engine.pool is not None
        loop = asyncio.get_running_loop()
        self._wake.clear()
        async with engine.pool.connection() as conn:
            # Cron slots are minutes apart: a busy worker (a pass per finished run) checks
            # them at most once a second, not once per run.
            if loop.time() - self._fired_at >= SCHEDULE_CHECK_S:
                await fire_due_schedules(conn, engine.q, self.clock)
                self._fired_at = loop.time()
            claimed: list[tuple[str, bool]] = []
            free = self.runs_at_once - len(active)
            batched = await self._short_runs(conn, engine) if free > 0 and self.short_runs else None
            if batched is not None:
                claimed = [(run_id, False) for run_id in batched.handed_over]
                free -= len(claimed)
            full_batch = batched is not None and batched.taken >= BATCH_SIZE
            if free > 0 and not full_batch:  # after a full batch, the next pass takes another
                began = time.perf_counter()
                cur = await conn.execute(
                    engine.q.claim_runnable, {"ttl": self.settings.lease_ttl_s, "limit": free}
                )
                more = [(str(row[0]), bool(row[1])) for row in await cur.fetchall()]
                if more:
                    self.stats.claim_latencies_s.append(time.perf_counter() - began)
                claimed += more
            more_now = full_batch or (bool(claimed) and len(active) + len(claimed) < self.runs_at_once)
            next_wake = None if more_now else await self._next_wake(conn, engine)
        for run_id, orphaned in claimed:
            self.stats.claimed += 1
            task = asyncio.create_task(self._execute(engine, run_id, orphaned))
            active.add(task)
            task.add_done_callback(self._finished_callback(active))
        if self.once and not claimed and not active and not (batched and batched.taken):
            return True
        if more_now:
            return False  # more may be runnable right away
        await self._sleep(self.poll_s if next_wake is None else max(0.01, min(self.poll_s, next_wake)))
        return False

    async def _short_runs(self, conn: psycopg.AsyncConnection, engine: Engine) -> BatchOutcome | None:
        """Run a batch of queued one-step runs in one transaction; None if the batch failed as
        a whole (it rolled back: its runs are pending again, for the ordinary path)."""
        caps = (self.settings.max_result_rows, self.settings.max_result_bytes)
        began = time.perf_counter()
        try:
            batch = await run_batch(conn, engine.q, engine.types, caps, BATCH_SIZE, self.settings.lease_ttl_s)
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise
        except (psycopg.Error, DurableError, ValueError, RecursionError) as exc:
            # This pass's ordinary claim takes them instead, so a run that breaks batches runs
            # alone from now on.
            log.warning("a batch of short runs rolled back (%s); they run one by one", exc)
            return None
        if batch.taken:
            self.stats.claim_latencies_s.append(time.perf_counter() - began)
        self.stats.claimed += len(batch.finished)
        self.stats.in_batches += len(batch.finished)
        self.stats.batch_statements += batch.statements
        for run_id, error in batch.finished:
            status = RunStatus.FAILED if error else RunStatus.COMPLETED
            self.stats.finished[status] = self.stats.finished.get(status, 0) + 1
            if self.on_outcome is not None:
                self.on_outcome(Outcome(run_id, status, error=error, failed_node=ROOT if error else None))
        return batch

    async def _next_wake(self, conn: psycopg.AsyncConnection, engine: Engine) -> float | None:
        """Seconds until the earliest parked run is due, if any run is parked."""
        cur = await conn.execute(engine.q.next_wake)
        row = await cur.fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def _finished_callback(self, active: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            active.discard(task)
            self._wake.set()

        return done

    async def _execute(self, engine: Engine, run_id: str, orphaned: bool) -> None:
        try:
            outcome = await engine.execute(run_id, orphaned=orphaned)
        except (RunBusy, RunNotFound):
            return
        except asyncio.CancelledError:
            raise
        except Exception:  # an outage past the reconnect window; the run stays claimable
            log.exception("run %s stopped unexpectedly", run_id)
            return
        self.stats.finished[outcome.status] = self.stats.finished.get(outcome.status, 0) + 1
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    async def _listen(self, engine: Engine) -> None:
        """Wake the loop on notifications; after a lost connection, poll and listen again."""
        delay = RECONNECT_MIN_S
        while True:
            try:
                conn = await open_async(self.settings.dsn, APP_PREFIX + engine.owner + ":listen")
            except ConnectionFailed:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
                continue
            try:
                for channel in CHANNELS:
                    await conn.execute(f"LISTEN {channel}".encode())
                delay = RECONNECT_MIN_S
                self._wake.set()  # anything sent while we were not listening is polled now
                async for _ in conn.notifies():
                    self._wake.set()
            except psycopg.Error:
                log.warning("lost the LISTEN connection; polling every %ss until it is back", self.poll_s)
            finally:
                await conn.close()
            await asyncio.sleep(delay)

    async def _heartbeat(self, engine: Engine) -> None:
        assert engine.pool is not None
        while True:
            try:
                async with engine.pool.connection() as conn:
                    await conn.execute(
                        engine.q.worker_heartbeat, (engine.owner, socket.gethostname(), os.getpid())
                    )
            except (psycopg.Error, PoolTimeout):  # an outage: the next beat tries again
                log.warning("worker heartbeat failed")
            await asyncio.sleep(5.0)

    async def _gone(self, engine: Engine) -> None:
        assert engine.pool is not None
        try:
            async with engine.pool.connection() as conn:
                await conn.execute(engine.q.worker_gone, (engine.owner,))
        except psycopg.Error:
            pass
