"""Claiming a run and keeping its lease.

Liveness: a runner holds a session advisory lock per run on its control connection.
Postgres drops the lock the moment that connection dies, so a dead runner is detected at
once. A runner that is alive but frozen or cut off keeps its lock; once its lease has expired
it is treated as dead: its backends (the lock holder included) are terminated first, so it can
write nothing when it wakes. Before any takeover the previous owner's backends are terminated,
so two copies of a step never run at the same time; the fence in ``checkpoint_node`` rejects
any checkpoint from a runner whose lease was taken.

Every statement runs on a connection that logs in as the run's own role: terminating only
reaches that login's backends, and the runtime's functions refuse runs of other roles.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, replace

import psycopg
from psycopg.rows import class_row

from dbt_durable.errors import DurableError, RunNotFound
from dbt_durable.store.connect import APP_PREFIX
from dbt_durable.store.queries import Queries
from dbt_durable.store.runs import RunRow

TERMINAL = ("completed", "failed", "cancelled", "quarantined")
MAX_CRASH_CLAIMS = 8
# Owner ids are 16 hex digits (secrets.token_hex(8)); a lease owner read from a row is used only
# if it has that shape, since the run's own role can write it.
_OWNER_ID = re.compile(r"^[0-9a-f]{16}$")


class RunBusy(DurableError):
    """Another live runner holds the run."""


@dataclass(frozen=True)
class Claim:
    """What a runner learns when it claims a run: whether it took the run (a finished run is
    not taken), the run's row as read under the run's advisory lock, and any cancel request as
    read under the run's row lock."""

    taken: bool
    run: RunRow
    cancel_requested: str | None = None


def lock_name(schema: str, run_id: str) -> str:
    return f"dbt_durable:{schema}:{run_id}"


async def claim(
    ctl: psycopg.AsyncConnection,
    q: Queries,
    schema: str,
    run_id: str,
    owner: str,
    ttl_s: float,
    wait_s: float,
    retry_failed: bool,
    orphaned: bool = False,
) -> Claim:
    """Take the run's advisory lock and lease, unless the run is already finished.

    ``orphaned``: the caller claimed the run because its lease had expired (a worker's
    ``claim_runs``), so a holder of its lock is frozen or cut off. Raises :class:`RunBusy` if
    another live runner with an unexpired lease keeps the lock for ``wait_s`` seconds,
    :class:`RunNotFound` if this login cannot see the run.
    """
    name = lock_name(schema, run_id)
    if not await _lock(ctl, q, name, wait_s):
        run = await _read(ctl, q, run_id)
        expired = await (await ctl.execute(q.lease_expired, (run_id,))).fetchone()
        if not (orphaned or (expired and expired[0])):
            raise RunBusy(
                f"run {run_id} is being executed by another live runner; wait for it, or cancel the run"
            )
        # Frozen or cut off past its lease: stop it for good, then its lock is free.
        await _terminate(ctl, q, run.lease_owner, name)
        if not await _lock(ctl, q, name, max(wait_s, 5.0)):
            raise RunBusy(f"run {run_id} is locked by a session this login cannot stop")
    try:
        run = await _read(ctl, q, run_id)
        if run.status in ("completed", "cancelled") or (run.status in TERMINAL and not retry_failed):
            await release(ctl, q, schema, run_id)
            return Claim(False, run)
        if run.lease_owner and run.lease_owner != owner:
            await _terminate(ctl, q, run.lease_owner, name)
        async with ctl.transaction():
            cur = await ctl.execute(
                q.take_run,
                {
                    "run_id": run_id,
                    "owner": owner,
                    "ttl": ttl_s,
                    "retry_failed": retry_failed,
                    "max_crashes": MAX_CRASH_CLAIMS,
                },
            )
            taken, status, cancel_requested = await cur.fetchone() or (False, run.status, None)
        if not taken:
            await release(ctl, q, schema, run_id)
            return Claim(False, replace(run, status=status))
        return Claim(True, run, cancel_requested)
    except BaseException:
        if not ctl.broken:
            await asyncio.shield(release(ctl, q, schema, run_id))
        raise


async def _lock(ctl: psycopg.AsyncConnection, q: Queries, name: str, wait_s: float) -> bool:
    if wait_s <= 0:  # workers never wait: another worker or runner has it
        row = await (await ctl.execute(q.advisory_try_lock, (name,))).fetchone()
        return bool(row and row[0])
    # lock_timeout = 0 would mean "wait forever", so the wait is at least 1 ms.
    await ctl.execute(f"SET lock_timeout = {max(1, int(wait_s * 1000))}".encode())
    try:
        await ctl.execute(q.advisory_lock, (name,))
        return True
    except psycopg.errors.LockNotAvailable:
        return False
    finally:
        await ctl.execute(b"RESET lock_timeout")


async def _read(ctl: psycopg.AsyncConnection, q: Queries, run_id: str) -> RunRow:
    cur = ctl.cursor(row_factory=class_row(RunRow))
    run = await (await cur.execute(q.get_run, (run_id,))).fetchone()
    if run is None:
        raise RunNotFound(f"no run {run_id} visible to this login")
    return run


async def _terminate(ctl: psycopg.AsyncConnection, q: Queries, lease_owner: str | None, lock: str) -> None:
    """Terminate this login's backends of runner ``lease_owner`` and the holder of ``lock``."""
    # An application_name has at most 63 bytes, so 64 x's match no backend.
    app = APP_PREFIX + lease_owner if lease_owner and _OWNER_ID.match(lease_owner) else "x" * 64
    await ctl.execute(q.terminate_owner, {"app": app, "lock": lock})


async def release(ctl: psycopg.AsyncConnection, q: Queries, schema: str, run_id: str) -> None:
    """Drop the run's advisory lock (the lease itself is cleared by finishing the run)."""
    if not ctl.broken:
        await ctl.execute(q.advisory_unlock, (lock_name(schema, run_id),))


async def heartbeat(
    ctl: psycopg.AsyncConnection,
    q: Queries,
    run_id: str,
    owner: str,
    ttl_s: float,
    every_s: float,
    on_cancel: asyncio.Event,
    on_lost: asyncio.Event,
) -> None:
    """Renew the lease every ``every_s`` seconds until cancelled.

    Sets ``on_cancel`` when a cancel is requested, ``on_lost`` when the lease is gone or the
    control connection broke (this runner must then stop without writing anything).
    """
    while True:
        await asyncio.sleep(every_s)
        try:
            cur = await ctl.execute(q.heartbeat, (run_id, owner, ttl_s))
            row = await cur.fetchone()
        except psycopg.Error:
            on_lost.set()
            return
        if row is None:
            on_lost.set()
            return
        if row[0] is not None:
            on_cancel.set()
