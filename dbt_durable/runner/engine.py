"""The runner of one process: its connection pools, its owner id, and the reconnect loop.

One Engine executes many runs, one after the other or at the same time; each run is executed
by a :class:`~dbt_durable.runner.run.RunExecution`. Every connection logs in as the settings'
login: a run's SQL executes as that login, so a step that runs ``RESET ROLE`` is still that
login (docs/SECURITY.md).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from dbt_durable.config import Settings
from dbt_durable.errors import ConnectionFailed
from dbt_durable.runner import steps
from dbt_durable.runner.backoff import Backoff
from dbt_durable.runner.run import RunExecution
from dbt_durable.runner.tasks import cancel_and_wait
from dbt_durable.runner.values import Disconnected, Outcome
from dbt_durable.store.connect import APP_PREFIX, connect_kwargs, open_async
from dbt_durable.store.queries import Queries

__all__ = ["Engine", "Outcome", "cancel_and_wait", "discard_session", "new_owner_id"]

log = logging.getLogger("dbt_durable.runner")


def new_owner_id() -> str:
    """A runner's owner id: 16 hex digits (the lease code relies on the shape)."""
    return secrets.token_hex(8)


async def discard_session(conn: psycopg.AsyncConnection) -> None:
    """Pool reset: the next run gets a session with nothing of this one's (settings,
    search_path, advisory locks, prepared statements, temporary tables, LISTENs)."""
    await conn.execute(b"DISCARD ALL")


class Engine:
    """Owns the connection pools and the owner id of one process."""

    def __init__(
        self, settings: Settings, clock: Callable[[], datetime] | None = None, owner: str | None = None
    ):
        self.settings = settings
        self.q = Queries(settings.schema)
        # ``owner``: given when the caller created a run already claimed for this engine.
        self.owner = owner or new_owner_id()
        self.clock = clock or (lambda: datetime.now(UTC))
        self.types = steps.TypeNames()
        self.pool: AsyncConnectionPool | None = None
        self.ctl_pool: AsyncConnectionPool | None = None

    async def __aenter__(self) -> Engine:
        app = APP_PREFIX + self.owner
        # Connections go back to a pool clean (DISCARD ALL): nothing of one run's session
        # survives into another.
        self.pool = AsyncConnectionPool(
            self.settings.dsn,
            min_size=1,
            max_size=self.settings.concurrency,
            kwargs=connect_kwargs(self.settings.dsn, app),
            open=False,
            # No check on checkout (it costs a round trip per strand): a connection that died
            # with a server restart fails its step as transient, and the step is retried.
            reset=discard_session,
            timeout=self.settings.pool_timeout_s,
        )
        # Control connections hold each run's advisory lock (its liveness) for the run's whole
        # life; pooling them spares a connection setup per run in workers.
        self.ctl_pool = AsyncConnectionPool(
            self.settings.dsn,
            min_size=1,
            max_size=max(4, self.settings.concurrency),
            kwargs=connect_kwargs(self.settings.dsn, app + ":ctl"),
            open=False,
            check=AsyncConnectionPool.check_connection,
            reset=discard_session,
            timeout=self.settings.pool_timeout_s,
        )
        # The pools connect in the background while the probe fails fast, with a clear
        # message, if the database cannot be reached.
        await self.pool.open(wait=False)
        await self.ctl_pool.open(wait=False)
        try:
            probe = await open_async(self.settings.dsn, app)
            await probe.close()
            await self.pool.wait()
            await self.ctl_pool.wait()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        for pool in (self.pool, self.ctl_pool):
            if pool is not None:
                await pool.close()

    async def execute(
        self,
        run_id: str,
        retry_failed: bool = False,
        echo: Callable[[str], None] | None = None,
        orphaned: bool = False,
    ) -> Outcome:
        """Run (or resume) ``run_id`` until it completes, fails, is cancelled or parks.

        A lost database (restart, failover, network) is waited out for up to
        ``reconnect_timeout_s``, then the run resumes in place: whatever committed is kept,
        the rest runs again. ``echo`` receives progress lines; ``orphaned``: see
        :func:`dbt_durable.runner.lease.claim`.
        """
        backoff = Backoff(0.1, 5.0, self.settings.reconnect_timeout_s)
        while True:
            execution = RunExecution(self, run_id)
            execution.echo = echo
            try:
                return await execution.run(retry_failed, orphaned)
            except PoolTimeout:
                raise
            except (Disconnected, ConnectionFailed, psycopg.OperationalError) as exc:
                log.warning("run %s: %s; reconnecting in %.1fs", run_id, exc, backoff.delay)
                if not await backoff.wait():
                    raise ConnectionFailed(
                        f"gave up reconnecting after {self.settings.reconnect_timeout_s:.0f}s: {exc}"
                    ) from None
                retry_failed = True
