"""Behind PgBouncer (started by the test, as the postgres system user, on 127.0.0.1).

- **Session mode works end to end**: workers and a ``start --wait`` runner connect through
  the pooler; LISTEN/NOTIFY wakes an idle worker; a SIGKILLed runner's advisory lock goes with
  its client connection, so the same command resumes at once; a SIGKILLed worker's runs are
  taken over; every run completes, each step's effect once.
- **Transaction mode is refused**: :func:`dbt_durable.store.pooler.refuse_transaction_pooling`
  detects that client connections share server backends and says what to configure. The
  reason, shown on the server: a session advisory lock (a run's liveness) outlives its client
  on a pooled backend, and the next client that lands on that backend "takes" it as well,
  so the lock no longer tells a live runner from a dead one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import psycopg
import pytest

from dbt_durable.api import Client
from dbt_durable.config import Settings
from dbt_durable.errors import ConfigError
from dbt_durable.store import pooler
from tests.ha import fleet
from tests.ha.servers import PGBOUNCER, PgServer, pgbouncer, requires_servers, single_server

pytestmark = [
    requires_servers,
    pytest.mark.skipif(not os.path.exists(PGBOUNCER), reason="pgbouncer is not installed"),
]

ADVISORY_LOCKS = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
SHORT_LEASE_WORKER = """
import asyncio, sys
from dbt_durable.config import Settings
from dbt_durable.runner.worker import Worker
settings = Settings(dsn=sys.argv[1], schema=sys.argv[2], lease_ttl_s=3.0, concurrency=8)
asyncio.run(Worker(settings, runs_at_once=4, poll_s=0.2, park_after_s=0.3).run())
"""


@pytest.fixture(scope="module")
def server() -> Iterator[PgServer]:
    with single_server("dd-bouncer-") as s:
        fleet.migrate(s.dsn)
        s.sql(fleet.EFFECTS_TABLE)
        yield s


@pytest.fixture(autouse=True)
def clean(server: PgServer) -> Iterator[None]:
    yield
    server.sql(f"TRUNCATE {fleet.SCHEMA}.runs, {fleet.SCHEMA}.nodes, public.effects CASCADE")


def test_detection(server: PgServer) -> None:
    assert pooler.detect(server.dsn).mode == "direct"
    assert pooler.refuse_transaction_pooling(server.dsn).mode == "direct"
    with pgbouncer(server, "session", ["postgres"]) as bouncer:
        assert pooler.detect(bouncer.dsn("postgres")).mode == "session"
        assert pooler.refuse_transaction_pooling(bouncer.dsn("postgres")).pooled
    with pgbouncer(server, "transaction", ["postgres"]) as bouncer:
        assert pooler.detect(bouncer.dsn("postgres")).mode == "transaction"
        with pytest.raises(ConfigError, match=r"transaction \(or statement\) mode.*pool_mode = session"):
            pooler.refuse_transaction_pooling(bouncer.dsn("postgres"))


def test_session_mode_end_to_end(server: PgServer) -> None:
    with pgbouncer(server, "session", ["postgres"]) as bouncer:
        dsn = bouncer.dsn("postgres")
        # A runner killed mid-run: its lock goes with its client connection, and the same
        # command resumes at once (no waiting for the lease).
        cmd = fleet.cli(dsn, "start", "--name", "bounced", "--key", "k", "--wait", fleet.chain(40, 0.05))
        first = fleet.Proc("runner", cmd, fleet.environment())
        fleet.wait_for(lambda: len(fleet.check(server.dsn).nodes) >= 5, 30, "the runner at work")
        first.kill()
        fleet.wait_for(lambda: server.sql(ADVISORY_LOCKS) == [(0,)], 5, "the lock released with the client")
        began = time.monotonic()
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stderr
        assert "already done" in again.stderr
        assert time.monotonic() - began < 8  # the claim did not wait out a lease (15 s)

        # An idle worker (polling every 30 s) is woken through the pooler by NOTIFY.
        client = Client(Settings(dsn=dsn, schema=fleet.SCHEMA))
        idle = fleet.worker(dsn, "idle", "--poll", "30")
        victim: fleet.Proc | None = None
        try:
            fleet.wait_for(lambda: "worker started" in idle.text(), 30, "the idle worker started")
            time.sleep(1.0)  # past its first claim pass: now it sleeps until woken
            queued = time.monotonic()
            run_id = client.start(fleet.chain(2), name="wake", wait=False).run_id
            fleet.wait_for(
                lambda: (
                    fleet.query(dsn, f"SELECT status FROM {fleet.SCHEMA}.runs WHERE run_id = %s", (run_id,))
                    == [("completed",)]
                ),
                10,
                "the woken worker finished the run",
            )
            assert time.monotonic() - queued < 5

            # Queued runs, one worker SIGKILLed while it holds some: the rest finish them.
            for i in range(16):
                client.start(fleet.chain(10, 0.05), name="pool", key=str(i), wait=False)
            victim = fleet.Proc(
                "victim", [sys.executable, "-c", SHORT_LEASE_WORKER, dsn, fleet.SCHEMA], fleet.environment()
            )
            fleet.wait_for(
                lambda: (
                    fleet.count_runs(server.dsn, "running") > 0 and len(fleet.check(server.dsn).nodes) > 60
                ),
                30,
                "runs in progress",
            )
            victim.signal(signal.SIGKILL)
            victim.process.wait()
            fleet.wait_for(lambda: fleet.count_runs(server.dsn, "completed") == 18, 60, "every run completed")
        finally:
            idle.stop()
            if victim is not None:
                victim.kill()
    after = fleet.check(server.dsn)
    assert after.exact, after
    assert len(after.nodes) == 40 + 2 + 16 * 10


def test_transaction_mode_strands_a_dead_clients_lock(server: PgServer) -> None:
    """Why transaction pooling is refused: a session lock outlives its client, and the next
    client that lands on the same backend "takes" it too (session locks are re-entrant)."""
    lock = "SELECT pg_try_advisory_lock(hashtextextended('dbt_durable:dbt_durable:some-run', 0))"
    with pgbouncer(server, "transaction", ["postgres"]) as bouncer:
        dsn = bouncer.dsn("postgres")
        with psycopg.connect(dsn, autocommit=True) as runner:
            assert runner.execute(lock).fetchone() == (True,)
        # The runner is gone (its connection closed), yet its lock is still held: by a backend
        # that PgBouncer keeps in its pool for the next client.
        held = (
            "SELECT a.state FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE l.locktype = 'advisory'"
        )
        assert server.sql(held) == [("idle",)]
        with psycopg.connect(dsn, autocommit=True) as other:
            assert other.execute(lock).fetchone() == (True,)  # a second "owner" of the same lock
    with pgbouncer(server, "session", ["postgres"]) as bouncer:
        with psycopg.connect(bouncer.dsn("postgres"), autocommit=True) as runner:
            assert runner.execute(lock).fetchone() == (True,)
        # Session mode resets the backend (DISCARD ALL) when its client leaves.
        fleet.wait_for(lambda: server.sql(ADVISORY_LOCKS) == [(0,)], 5, "the lock released with its client")
