"""The one home of a run's node writes: checkpoints, marks (waiting, failed) and events.

Every write goes through the runtime's fenced functions (``checkpoint_node``, ``mark_node``,
``record_event``): a runner whose lease was taken writes nothing. Transactional SQL steps
checkpoint inside their own transaction through ``runner.lane.Lane``, with statements built by
``runner.steps.CheckpointWriter``; everything else is written here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from dbt_durable.errors import LeaseLost, RunCancelled
from dbt_durable.store.queries import Queries
from dbt_durable.store.status import NodeStatus

# A failure must still be recorded when branches hold every connection (strands release
# theirs before writing, so the wait always ends): state writes wait at least this long.
STATE_WRITE_WAIT_S = 300.0


def fence_error(exc: psycopg.Error) -> LeaseLost | RunCancelled | None:
    """The runner error for a failed fence (lease lost or run cancelled), else None."""
    state = exc.sqlstate or ""
    if state == "DU001":
        return LeaseLost(str(exc.diag.message_primary or exc))
    if state == "DU002":
        return RunCancelled(str(exc.diag.message_primary or exc))
    return None


class NodeWriter:
    """Writes the node executions of one run for one runner (``owner``)."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        q: Queries,
        run_id: str,
        owner: str,
        clock: Callable[[], datetime],
        pool_timeout_s: float,
    ):
        self.pool = pool
        self.q = q
        self.run_id = run_id
        self.owner = owner
        self.clock = clock
        self.wait_s = max(pool_timeout_s, STATE_WRITE_WAIT_S)

    def connection(self) -> AbstractAsyncContextManager[psycopg.AsyncConnection]:
        """A pooled connection for state writes (waits longer than steps do)."""
        return self.pool.connection(timeout=self.wait_s)

    async def checkpoint(self, key: str, node_id: str, kind: str, attempt: int, result: Any) -> None:
        """Record node execution ``key`` as completed with ``result``."""
        async with self.connection() as conn:
            await self.checkpoint_on(conn, key, node_id, kind, attempt, result)

    async def checkpoint_on(
        self, conn: psycopg.AsyncConnection, key: str, node_id: str, kind: str, attempt: int, result: Any
    ) -> None:
        """:meth:`checkpoint` on ``conn``, in whatever transaction it has open."""
        args = (self.run_id, self.owner, key, node_id, kind, attempt, Jsonb(result), self.clock())
        await _fenced(conn.execute(self.q.checkpoint, args))

    async def mark(
        self,
        key: str,
        node_id: str,
        kind: str,
        status: NodeStatus,
        attempt: int,
        error: str | None,
        wake_at: datetime | None,
    ) -> None:
        """Record node execution ``key`` as waiting (until ``wake_at``) or failed."""
        args = (self.run_id, self.owner, key, node_id, kind, str(status), attempt, error, wake_at)
        async with self.connection() as conn:
            await _fenced(conn.execute(self.q.mark_node, args))

    async def event(self, key: str, kind: str, detail: dict[str, Any]) -> None:
        """Append ``kind`` (e.g. ``node_retry``) to the run's history."""
        async with self.connection() as conn:
            await conn.execute(self.q.record_event, (self.run_id, kind, Jsonb({"exec_key": key, **detail})))


async def _fenced(statement: Awaitable[Any]) -> Any:
    try:
        return await statement
    except psycopg.Error as exc:
        err = fence_error(exc)
        if err is not None:
            raise err from None
        raise
