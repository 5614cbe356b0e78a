"""A PostgreSQL failover in the middle of a busy fleet, with real servers.

A primary and a streaming standby (Debian's PostgreSQL 15) run on 127.0.0.1. Workers and
``start --wait`` runners connect with one multi-host DSN (``target_session_attrs=read-write``).
Mid-run the primary is killed (``pg_ctl stop -m immediate``) and the standby promoted; the
clients reconnect on their own and finish every run.

- Synchronous replication: every checkpoint that was acknowledged before the kill is on the
  new primary as it was written (same ``finished_at``: never lost and redone), every
  transactional step's effect exists once per completed node, and every run completes.
- Asynchronous replication, with the standby cut off for a moment before the kill (as a
  lagging standby is): the checkpoints committed after the cut are lost, and each lost
  checkpoint's effect is lost with it (effect row iff checkpoint; same transaction id), then
  redone once.

FAILOVER_REPORT=path writes the figures as JSON (docs/RELIABILITY.md quotes them).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from dbt_durable.api import Client
from dbt_durable.config import Settings
from dbt_durable.runner.health import Health
from tests.ha import fleet
from tests.ha.servers import PgServer, primary_and_standby, requires_servers, wait_until

pytestmark = requires_servers

QUEUED, QUEUED_STEPS = 32, 16  # runs for the workers
SOLO, SOLO_STEPS = 2, 60  # `start --wait` runners, one run each
FIGURES: dict[str, Any] = {}


@pytest.fixture(scope="module", autouse=True)
def report() -> Any:
    yield
    path = os.environ.get("FAILOVER_REPORT")
    if path:
        Path(path).write_text(json.dumps(FIGURES, indent=2, default=str))


def multi_host(primary: PgServer, standby: PgServer) -> str:
    return (
        f"host=127.0.0.1,127.0.0.1 port={primary.port},{standby.port} user=postgres dbname=postgres "
        "target_session_attrs=read-write connect_timeout=2"
    )


def completed_steps(server: PgServer) -> dict[tuple[str, str], datetime]:
    rows = server.sql(
        f"SELECT run_id::text, exec_key, finished_at FROM {fleet.SCHEMA}.nodes WHERE status = 'completed'"
    )
    return {(str(r[0]), str(r[1])): r[2] for r in rows}


def start_fleet(dsn: str) -> list[fleet.Proc]:
    fleet.migrate(dsn)
    fleet.query(dsn, fleet.EFFECTS_TABLE)
    client = Client(Settings(dsn=dsn, schema=fleet.SCHEMA))
    for i in range(QUEUED):
        client.start(fleet.chain(QUEUED_STEPS), name="failover", key=str(i), wait=False)
    procs = [fleet.worker(dsn, f"worker-{i}") for i in range(2)]
    procs += [fleet.runner(dsn, f"solo-{i}", fleet.chain(SOLO_STEPS, 0.03), "solo") for i in range(SOLO)]
    return procs


def total_steps() -> int:
    return QUEUED * QUEUED_STEPS + SOLO * SOLO_STEPS


def finish(dsn: str, procs: list[fleet.Proc], timeout: float) -> None:
    """Every run completes; the runners exit 0; the workers drain on SIGTERM."""
    runs = QUEUED + SOLO
    try:
        fleet.wait_for(
            lambda: fleet.count_runs(dsn, "completed") == runs, timeout, "every run completed", every=0.2
        )
        for p in procs:
            if p.name.startswith("solo"):
                assert p.process.wait(timeout=timeout) == 0, p.text()
    except AssertionError:
        for p in procs:
            print(f"--- {p.name}\n{p.text()[-3000:]}")
        raise
    finally:
        for p in procs:
            p.stop()
    assert fleet.count_runs(dsn) == runs


def test_synchronous_failover_loses_nothing_and_duplicates_nothing() -> None:
    with primary_and_standby(synchronous=True) as (primary, standby):
        dsn = multi_host(primary, standby)
        began = time.monotonic()
        procs = start_fleet(dsn)
        # A worker's health check counts a DSN that lands on the standby as down (read-only).
        probe = asyncio.run(Health([], []).database_state(standby.dsn))
        assert not probe.ok and probe.detail.startswith("read-only")
        # Mid-run: a third of the steps are checkpointed.
        wait_until(lambda: len(completed_steps(primary)) >= total_steps() // 3, what="a third done")
        acknowledged = completed_steps(primary)  # committed, hence flushed on the standby
        killed_at = time.time()
        primary.stop("immediate")
        dead_at = time.time()  # from here on, every new checkpoint is the new primary's
        standby.promote()
        promoted_s = time.time() - killed_at

        # The new primary has every acknowledged checkpoint, as it was written (not redone).
        survivors = completed_steps(standby)
        missing = [k for k in acknowledged if k not in survivors]
        rewritten = [k for k, at in acknowledged.items() if k in survivors and survivors[k] != at]
        assert missing == [] and rewritten == []

        finish(standby.dsn, procs, timeout=60)
        after = fleet.check(standby.dsn)
        assert after.exact, after
        assert len(after.nodes) == total_steps()
        first_new = min(at for at in after.nodes.values() if at.timestamp() > dead_at)
        FIGURES["synchronous"] = {
            "runs": QUEUED + SOLO,
            "steps": total_steps(),
            "acknowledged_before_kill": len(acknowledged),
            "lost": len(missing),
            "duplicated": after.duplicated,
            "kill_s": round(dead_at - killed_at, 3),
            "kill_to_promoted_s": round(promoted_s, 3),
            "kill_to_first_new_checkpoint_s": round(first_new.timestamp() - killed_at, 3),
            "test_s": round(time.monotonic() - began, 1),
        }


def test_asynchronous_failover_loses_recent_checkpoints_with_their_effects() -> None:
    with primary_and_standby(synchronous=False) as (primary, standby):
        dsn = multi_host(primary, standby)
        began = time.monotonic()
        procs = start_fleet(dsn)
        wait_until(lambda: len(completed_steps(primary)) >= total_steps() // 5, what="a fifth done")
        # Replicated for sure: seen on the primary, then replayed by the standby.
        replicated = completed_steps(primary)
        lsn = primary.sql("SELECT pg_current_wal_lsn()::text")[0][0]
        wait_until(
            lambda: standby.sql("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)) == [(True,)],
            what="the standby caught up",
        )
        # The standby stops receiving WAL (a lagging or partitioned standby), the primary goes on.
        standby.sql("ALTER SYSTEM SET primary_conninfo = ''")
        standby.sql("SELECT pg_reload_conf()")
        wait_until(lambda: primary.sql("SELECT count(*) FROM pg_stat_replication") == [(0,)], what="cut off")
        cut = len(completed_steps(primary))
        wait_until(lambda: len(completed_steps(primary)) >= cut + 40, what="more work after the cut")
        acknowledged = completed_steps(primary)
        primary.stop("immediate")
        # Hold the clients while the standby is promoted, to look at exactly what survived.
        for p in procs:
            p.signal(signal.SIGSTOP)
        try:
            standby.promote()
            at_promotion = fleet.check(standby.dsn)
        finally:
            for p in procs:
                p.signal(signal.SIGCONT)

        assert all(k in at_promotion.nodes for k in replicated)  # what was replicated survives
        lost = [k for k in acknowledged if k not in at_promotion.nodes]
        assert len(lost) >= 40  # acknowledged to the runners, and gone
        # Lost consistently: each step's effect exists iff its checkpoint does, written by the
        # same transaction, at the promotion as at the end.
        assert at_promotion.exact, at_promotion

        finish(standby.dsn, procs, timeout=60)
        after = fleet.check(standby.dsn)
        assert after.exact, after
        assert len(after.nodes) == total_steps()
        redone = [k for k in lost if after.nodes.get(k) != acknowledged[k]]
        assert len(redone) == len(lost)  # every lost step ran again, once
        FIGURES["asynchronous"] = {
            "runs": QUEUED + SOLO,
            "steps": total_steps(),
            "acknowledged_before_kill": len(acknowledged),
            "replicated_before_cut": len(replicated),
            "lost_with_their_effects": len(lost),
            "redone_once": len(redone),
            "duplicated": after.duplicated,
            "test_s": round(time.monotonic() - began, 1),
        }
