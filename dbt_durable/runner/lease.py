"""Claiming a run and keeping its lease.

Liveness: a runner holds a session advisory lock per run on its control connection.
Postgres drops the lock the moment that connection dies, so a dead runner is detected at
once. Before taking over, the new runner terminates the old runner's backends (found by
``application_name``), so two copies of a step never run at the same time; the fence in
``checkpoint_node`` rejects any checkpoint from a runner whose lease was taken.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from dbt_durable.errors import DurableError
from dbt_durable.store.connect import APP_PREFIX
from dbt_durable.store.queries import Queries

TERMINAL = ("completed", "failed", "cancelled")


class RunBusy(DurableError):
    """Another live runner holds the run."""


@dataclass
class Claim:
    """What a runner learns when it claims a run: whether it took the run (a finished run is
    not taken), the run's row (``Queries.get_run``) as read under the run's advisory lock, and
    any cancel request as read under the run's row lock."""

    taken: bool
    run: tuple[Any, ...]
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
) -> Claim:
    """Take the run's advisory lock and lease, unless the run is already finished.

    Raises :class:`RunBusy` if another live runner keeps the lock for ``wait_s`` seconds.
    """
    name = lock_name(schema, run_id)
    busy = RunBusy(f"run {run_id} is being executed by another live runner; wait for it, or cancel the run")
    if wait_s <= 0:  # workers never wait: another worker or runner has it
        row = await (await ctl.execute(q.advisory_try_lock, (name,))).fetchone()
        if not (row and row[0]):
            raise busy
    else:
        # lock_timeout = 0 would mean "wait forever", so the wait is at least 1 ms.
        await ctl.execute(f"SET lock_timeout = {max(1, int(wait_s * 1000))}".encode())
        try:
            await ctl.execute(q.advisory_lock, (name,))
        except psycopg.errors.LockNotAvailable:
            raise busy from None
        finally:
            await ctl.execute(b"RESET lock_timeout")
    cur = await ctl.execute(q.get_run, (run_id,))
    row = await cur.fetchone()
    assert row is not None
    status, old_owner = row[6], row[8]
    if status in ("completed", "cancelled") or (status == "failed" and not retry_failed):
        await ctl.execute(q.advisory_unlock, (name,))
        return Claim(False, tuple(row))
    if old_owner and old_owner != owner:
        await ctl.execute(q.terminate_owner, (APP_PREFIX + old_owner,))
    async with ctl.transaction():
        await ctl.execute(q.fence_takeover, (run_id,))
        cur = await ctl.execute(q.lock_run, (run_id,))
        locked = await cur.fetchone()
        assert locked is not None
        if locked[2] is not None:  # cancel requested while nobody ran it
            await ctl.execute(q.take_lease, {"owner": owner, "ttl": ttl_s, "run_id": run_id})
            return Claim(True, tuple(row), locked[2])
        if locked[0] == "failed":
            await ctl.execute(q.reset_failed_nodes, (run_id,))
        await ctl.execute(q.take_lease, {"owner": owner, "ttl": ttl_s, "run_id": run_id})
        await ctl.execute(
            q.insert_run_event,
            (run_id, "run_claimed", Jsonb({"owner": owner, "previous_owner": old_owner})),
        )
    return Claim(True, tuple(row))


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
            cur = await ctl.execute(q.heartbeat, (ttl_s, run_id, owner))
            row = await cur.fetchone()
        except psycopg.Error:
            on_lost.set()
            return
        if row is None:
            on_lost.set()
            return
        if row[0] is not None:
            on_cancel.set()
