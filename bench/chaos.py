"""The five chaos cells of the public 2026 Postgres job-queue sweep, against our workers.

Each cell runs on a private PostgreSQL 15 (``bench/pg15.py``: the harness stops and starts it,
so not the server the other scenarios share). Two worker processes
(``python -m bench.worker_process --forever``, ``runs_at_once=4``) serve a producer that
queues one-node runs of ``'SELECT 1'`` at a fixed rate (``chaos_rate``, the rows
``client.start`` creates), catching up on any it could not queue while the server was away.
Three phases of ``chaos_phase_s`` each: baseline, chaos, recovery. The figure, as in the
sweep, is the completion rate during recovery divided by the baseline rate, in percent
(runs whose ``finished_at`` falls in each phase). The chaos:

- ``postgres_restart``: the server is stopped (``pg_ctl -m fast``) for half the phase, then
  started again.
- ``pg_backend_kill``: ``pg_terminate_backend`` on one of the workers' backends, 4 a second.
- ``pool_exhaustion``: 300 idle connections opened, then held for the phase length
  (``max_connections`` = 400); the chaos phase is the opening plus the hold.
- ``crash_recovery``: worker process 0 is SIGKILLed at the phase's start and started again at
  its end.
- ``repeated_kills``: worker process 0 is SIGKILLed and started again every second.

The baseline starts once the workers have caught up with the runs queued while they started.
After the recovery phase the harness waits (up to 60 s) for every queued run to complete and
reports any that did not as ``lost`` in the notes.
"""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import psycopg
from psycopg import sql

from bench import flows
from bench.pg15 import Pg15, pg15_server, unavailable
from bench.result import Bench, ScenarioResult
from bench.workers import REPO, RUNS_AT_ONCE
from dbt_durable.api import Client
from dbt_durable.config import Settings
from dbt_durable.graph.build import compile_flow
from dbt_durable.store.queries import Queries
from dbt_durable.store.runs import new_run_params

CELLS = ("postgres_restart", "pg_backend_kill", "pool_exhaustion", "crash_recovery", "repeated_kills")
METRICS = [f"chaos_{cell}_pct" for cell in CELLS]
SCHEMA = "bench_chaos"
WORKERS = 2
IDLE_CONNECTIONS = 300
KILLS_PER_S = 4.0
REPEATED_KILL_PERIOD_S = 1.0
SETTLE_TIMEOUT_S = 60.0


class Producer(threading.Thread):
    """Queues runs at ``rate`` per second; while the database is away it retries, and then
    queues what it owes."""

    def __init__(self, dsn: str, rate: float):
        super().__init__(daemon=True)
        self.dsn, self.rate = dsn, rate
        self.params = new_run_params(compile_flow(flows.TRIVIAL), "bench_chaos", None, {})
        self.insert = Queries(SCHEMA).create_run
        self.produced = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        began = time.monotonic()
        conn: psycopg.Connection | None = None
        while not self.stopping.is_set():
            owed = math.floor((time.monotonic() - began) * self.rate) - self.produced
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.dsn, autocommit=True, application_name="bench_producer")
                if owed > 0:
                    with conn.transaction():
                        conn.cursor().executemany(self.insert, [self.params] * owed)
                    self.produced += owed
            except psycopg.Error:
                if conn is not None:
                    conn.close()
                conn = None
            self.stopping.wait(0.02)
        if conn is not None:
            conn.close()


class Fleet:
    """The worker processes of one cell."""

    def __init__(self, settings: Settings, folder: Path):
        self.settings, self.folder = settings, folder
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * WORKERS
        self.logs: list[IO[bytes]] = []

    def start(self, i: int) -> None:
        log = open(self.folder / f"worker{i}.log", "ab")
        self.logs.append(log)
        cmd = [sys.executable, "-m", "bench.worker_process", self.settings.dsn, self.settings.schema]
        cmd += [str(RUNS_AT_ONCE), os.devnull, "--forever"]
        self.procs[i] = subprocess.Popen(
            cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log
        )

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def stop(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            if proc is not None:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for log in self.logs:
            log.close()

    def exited(self) -> list[int]:
        return [p.returncode for p in self.procs if p is not None and p.poll() is not None]


def _completed_between(dsn: str, start: datetime, end: datetime) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT count(*) FROM {}.runs WHERE status = 'completed' AND finished_at >= %s AND finished_at < %s"
            ).format(sql.Identifier(SCHEMA)),
            (start, end),
        ).fetchone()
    return int(row[0]) if row else 0


def _counts(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FILTER (WHERE status = 'completed'), count(*) FROM {}.runs").format(
                sql.Identifier(SCHEMA)
            )
        ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _kill_backends(server: Pg15, seconds: float) -> int:
    """``pg_terminate_backend`` on a random one of the workers' backends, KILLS_PER_S a second."""
    killed = 0
    end = time.monotonic() + seconds
    with psycopg.connect(server.dsn, autocommit=True, application_name="bench_chaos") as admin:
        while time.monotonic() < end:
            pids = [
                r[0]
                for r in admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'dbt_durable:%%'"
                    " AND pid <> pg_backend_pid()"
                ).fetchall()
            ]
            if pids:
                admin.execute("SELECT pg_terminate_backend(%s)", (random.choice(pids),))
                killed += 1
            time.sleep(1.0 / KILLS_PER_S)
    return killed


def _hold_connections(server: Pg15, seconds: float) -> int:
    """Open IDLE_CONNECTIONS connections (however long that takes, up to a minute), then hold
    them for ``seconds``; the phase is the opening plus the hold."""
    held: list[psycopg.Connection] = []
    opening_ends = time.monotonic() + 60
    try:
        while len(held) < IDLE_CONNECTIONS and time.monotonic() < opening_ends:
            try:
                held.append(psycopg.connect(server.dsn, autocommit=True, application_name="bench_idle"))
            except psycopg.Error:
                break
        time.sleep(seconds)
        return len(held)
    finally:
        for conn in held:
            conn.close()


def _chaos_action(cell: str, server: Pg15, fleet: Fleet, seconds: float) -> dict[str, object]:
    if cell == "postgres_restart":
        began = time.monotonic()
        server.stop("fast")
        time.sleep(max(0.0, seconds / 2 - (time.monotonic() - began)))
        server.start()
        time.sleep(max(0.0, seconds - (time.monotonic() - began)))
        return {"down_s": round(seconds / 2, 2)}
    if cell == "pg_backend_kill":
        return {"backends_terminated": _kill_backends(server, seconds)}
    if cell == "pool_exhaustion":
        return {"idle_connections_held": _hold_connections(server, seconds)}
    if cell == "crash_recovery":
        fleet.kill(0)
        time.sleep(seconds)
        fleet.start(0)
        return {"killed": 1}
    if cell == "repeated_kills":
        end, kills = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            fleet.kill(0)
            fleet.start(0)
            kills += 1
            time.sleep(min(REPEATED_KILL_PERIOD_S, max(0.0, end - time.monotonic())))
        return {"kills": kills}
    raise ValueError(cell)


def _wait_until(check: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.1)
    return False


def run_cell(b: Bench, server: Pg15, cell: str, folder: Path) -> tuple[float, dict[str, object]]:
    """One cell: returns the recovery ÷ baseline completion rate in percent, and its notes."""
    phase = b.sizes.chaos_phase_s
    settings = Settings(dsn=server.dsn, schema=SCHEMA)
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    Client(settings).migrate()
    fleet = Fleet(settings, folder)
    producer = Producer(server.dsn, b.sizes.chaos_rate)
    try:
        for i in range(WORKERS):
            fleet.start(i)
        producer.start()

        # The baseline starts once the workers keep up: the backlog queued while they started
        # is drained (fewer than a quarter second's runs pending).
        def steady() -> bool:
            done, total = _counts(server.dsn)
            return done > 0 and total - done < b.sizes.chaos_rate / 4

        if not _wait_until(steady, 120):
            raise RuntimeError(f"{cell}: the workers did not catch up within 120 s of starting")
        t0 = datetime.now(UTC)
        time.sleep(phase)
        t1 = datetime.now(UTC)
        notes = _chaos_action(cell, server, fleet, phase)
        t2 = datetime.now(UTC)
        time.sleep(phase)
        t3 = datetime.now(UTC)
        producer.stopping.set()
        producer.join()
        settled = _wait_until(lambda: _counts(server.dsn)[0] == producer.produced, SETTLE_TIMEOUT_S)
        baseline = _completed_between(server.dsn, t0, t1)
        chaos = _completed_between(server.dsn, t1, t2)
        recovery = _completed_between(server.dsn, t2, t3)
        done, total = _counts(server.dsn)
        exited = fleet.exited()
    finally:
        producer.stopping.set()
        fleet.stop()
    base_rate = baseline / (t1 - t0).total_seconds()
    rec_rate = recovery / (t3 - t2).total_seconds()
    notes.update(
        {
            "baseline_runs_per_s": round(base_rate, 1),
            "chaos_runs_per_s": round(chaos / (t2 - t1).total_seconds(), 1),
            "recovery_runs_per_s": round(rec_rate, 1),
            "produced": producer.produced,
            "lost": total - done if not settled else 0,
            "worker_processes_that_exited_on_their_own": [c for c in exited if c not in (-9, -15)],
        }
    )
    pct = round(100.0 * rec_rate / base_rate) if base_rate > 0 else 0.0
    return float(pct), notes


def chaos(b: Bench) -> ScenarioResult:
    res = ScenarioResult(
        "chaos",
        params={
            "cells": list(b.sizes.chaos_cells),
            "phase_s": b.sizes.chaos_phase_s,
            "offered_runs_per_s": b.sizes.chaos_rate,
            "worker_processes": WORKERS,
            "server": "PostgreSQL 15 (Debian), private, 127.0.0.1",
        },
    )
    skipped = [f"chaos_{c}_pct" for c in CELLS if c not in b.sizes.chaos_cells]
    if skipped:
        res.skip(skipped, f"not run in --{b.sizes.mode} (each cell needs worker processes and three phases)")
    if not b.sizes.chaos_cells:
        return res
    reason = unavailable()
    if reason:
        res.skip([f"chaos_{c}_pct" for c in b.sizes.chaos_cells], reason)
        return res
    with pg15_server() as server, tempfile.TemporaryDirectory(prefix="dbt-durable-bench-chaos-") as tmp:
        for cell in b.sizes.chaos_cells:
            pct, notes = run_cell(b, server, cell, Path(tmp))
            res.metrics[f"chaos_{cell}_pct"] = pct
            res.notes[cell] = notes
            b.log(f"[chaos] {cell}: recovery/baseline {pct:.0f}% {notes}")
    return res
