"""A lane: one sequential strand of a run, with its own connection and a pending checkpoint.

Each transactional SQL step costs one round trip::

    RELEASE SAVEPOINT s; SELECT checkpoint_node(<previous step>); COMMIT;
    BEGIN; [SET LOCAL ...;] <this step>; SAVEPOINT s

The previous step's effects and its checkpoint commit together (they share a transaction),
and this step starts only once that commit succeeded. A round trip that fails before any of
it runs (PostgreSQL parses the whole text first, so a syntax error in this step fails it
whole) leaves the session inside the previous step's savepoint: the lane rolls back to it,
commits the previous step with its checkpoint, and runs this step alone, so the previous
step's SQL runs exactly once and the error is this step's. A crash loses at most the open step,
whose effects roll back with its missing checkpoint: exactly once either way. The lane is
flushed (its pending checkpoint committed) and its connection released before anything else
runs in the strand, so other connections always see committed work.
"""

from __future__ import annotations

import json
from contextlib import AbstractAsyncContextManager
from typing import Any

import psycopg
from psycopg import pq
from psycopg_pool import AsyncConnectionPool

from dbt_durable.errors import DurableError, ResultTooLarge
from dbt_durable.runner import faults
from dbt_durable.runner.results import build_result
from dbt_durable.runner.steps import (
    CheckpointWriter,
    StepSqlError,
    TypeNames,
    _describe,
)
from dbt_durable.runner.wire import Wire
from dbt_durable.store.nodes import fence_error


class Uncertain(DurableError):
    """A round trip failed and the pending checkpoint may not have committed.

    The runner re-walks the run from the database (a resume in place): whatever committed is
    skipped, whatever did not runs again. ``solo``: the step whose combined round trip failed
    while the connection stayed up (a syntax error fails the whole round trip before anything
    runs); on the re-walk the lane commits the previous checkpoint on its own before that step,
    so the step's error is reported at the step, once.
    """

    def __init__(self, message: str, solo: str | None = None):
        super().__init__(message)
        self.solo = solo


SAVEPOINT_NAME = b"dbt_durable_step"
SAVEPOINT = b"SAVEPOINT " + SAVEPOINT_NAME
RELEASE = b"RELEASE SAVEPOINT " + SAVEPOINT_NAME + b";"


def _step_error(exc: psycopg.Error, conn: psycopg.AsyncConnection) -> StepSqlError:
    if exc.sqlstate == "25P01":  # our savepoint found no transaction: the step ended it
        return StepSqlError(
            "the step ended its own transaction (COMMIT/ROLLBACK inside a step); "
            "mark it with (transaction=false) if that is intended"
        )
    return StepSqlError(_describe(exc), transient=conn.broken)


class Lane:
    """One strand's connection and pending checkpoint. Not shared between tasks."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        checkpoints: CheckpointWriter,
        node_status_query: str,
        types: TypeNames,
        type_query: str,
        caps: tuple[int, int],
        run_id: str,
        flow_name: str,
        solo: set[str] | None = None,
    ):
        self.pool = pool
        self.checkpoints = checkpoints
        self.node_status_query = node_status_query
        self.types = types
        self.type_query = type_query
        self.caps = caps
        self.run_id = run_id
        self.flow_name = flow_name
        self.solo = solo if solo is not None else set()
        self.conn: psycopg.AsyncConnection | None = None
        self.wire: Wire | None = None
        self._cm: AbstractAsyncContextManager[psycopg.AsyncConnection] | None = None
        self.pending: bytes | None = None  # "SELECT checkpoint_node(...)" of the open step
        self.pending_key: str | None = None

    async def connection(self) -> psycopg.AsyncConnection:
        """The lane's connection, taken from the pool on first use."""
        if self.conn is None:
            self._cm = self.pool.connection()
            self.conn = await self._cm.__aenter__()
            self.wire = Wire(self.conn)
        return self.conn

    async def run(
        self, step_sql: str, timeout_s: float | None, key: str, node_id: str, attempt: int, started_at: Any
    ) -> Any:
        """Run transactional step ``key``, committing the previous one's checkpoint first.

        Raises :class:`StepSqlError` (the step failed; the previous checkpoint is committed),
        :class:`Uncertain`, or the fence's LeaseLost / RunCancelled.
        """
        conn = await self.connection()
        if self.pending is not None and key in self.solo:
            await self.flush()
        begin = b"BEGIN;"
        if timeout_s:
            begin += f"SET LOCAL statement_timeout = {int(timeout_s * 1000)};".encode()
        head = begin if self.pending is None else RELEASE + self.pending + b";COMMIT;" + begin
        try:
            res = await self._round_trip(head, step_sql)
        except ResultTooLarge:
            # Only the step returns rows: what came before it (the checkpoint) committed.
            self._committed_pending()
            await self._rollback()
            raise
        except psycopg.Error as exc:
            if not await self._recover_previous(exc):
                await self._after_error(exc, key)
                raise _step_error(exc, conn) from None
            # Nothing of that round trip ran (a syntax error fails it whole): the previous
            # step is intact and now committed with its checkpoint; the step runs on its own.
            try:
                res = await self._round_trip(begin, step_sql)
            except psycopg.Error as exc2:
                await self._after_error(exc2, key)
                raise _step_error(exc2, conn) from None
        self._committed_pending()
        faults.hit("in_step", key, self.flow_name)
        if conn.pgconn.transaction_status != pq.TransactionStatus.INTRANS:
            await self._rollback()
            raise StepSqlError(
                "the step ended its own transaction (COMMIT/ROLLBACK inside a step); "
                "mark it with (transaction=false) if that is intended"
            )
        try:
            if self.types.missing(res):
                if self.wire is not None:
                    self.wire.detach()  # psycopg is about to use the connection
                await self.types.ensure(conn, res, self.type_query)
            result = build_result(res, self.types.names, *self.caps)
        except BaseException:
            await self._rollback()
            raise
        self.pending = self.checkpoints.statement(key, node_id, attempt, json.dumps(result), started_at)
        self.pending_key = key
        return result

    async def _round_trip(self, head: bytes, step_sql: str) -> Any:
        """Send ``head``, the step and a savepoint after it; the step's last result.

        The savepoint lets :meth:`_recover_previous` keep this step's effects if the next
        round trip (which starts with this step's checkpoint) fails before running at all."""
        assert self.wire is not None
        query = head + b"\n" + step_sql.encode() + b"\n;" + SAVEPOINT
        return (await self.wire.query(query, self.caps))[-2]

    async def _recover_previous(self, exc: psycopg.Error) -> bool:
        """After a failed round trip that carried the previous step's checkpoint: if nothing
        of it ran (the session is still inside the previous step's savepoint), roll back to
        that savepoint and commit the previous step with its checkpoint; True if so."""
        conn = self.conn
        if self.pending is None or conn is None or conn.broken or fence_error(exc) is not None:
            return False
        if conn.pgconn.transaction_status != pq.TransactionStatus.INERROR:
            return False
        if self.wire is not None:
            self.wire.detach()
        try:
            await conn.execute(b"ROLLBACK TO SAVEPOINT " + SAVEPOINT_NAME)
        except psycopg.Error:
            return False  # the savepoint is gone: part of the round trip ran
        await self.flush()
        return True

    async def flush(self) -> None:
        """Commit the pending checkpoint (and with it the open step's effects)."""
        if self.pending is None or self.wire is None:
            return
        try:
            await self.wire.query(RELEASE + self.pending + b";COMMIT")
        except psycopg.Error as exc:
            await self._after_error(exc)
            raise Uncertain(
                f"could not commit the checkpoint of {self.pending_key}: {_describe(exc)}"
            ) from None
        self._committed_pending()

    async def release(self) -> None:
        """Flush, then give the connection back to the pool."""
        await self.flush()
        await self.discard()

    async def discard(self) -> None:
        """Give the connection back without committing (an open step rolls back)."""
        self.pending = self.pending_key = None
        if self.wire is not None:
            self.wire.detach()
            self.wire = None
        if self._cm is not None:
            cm, self._cm, self.conn = self._cm, None, None
            await cm.__aexit__(None, None, None)  # the pool rolls back and discards the session

    def _committed_pending(self) -> None:
        if self.pending_key is not None:
            key = self.pending_key
            self.pending = self.pending_key = None
            faults.hit("after_commit", key, self.flow_name)

    async def _after_error(self, exc: psycopg.Error, step_key: str | None = None) -> None:
        """After a failed round trip: did the pending checkpoint commit? Raise if unsure.

        ``step_key``: the step sent in the same round trip, if any."""
        if self.wire is not None:
            self.wire.detach()
        fenced = fence_error(exc)
        if fenced is not None:
            await self.discard()
            raise fenced from None
        if self.pending_key is None:
            await self._rollback()
            return
        key = self.pending_key
        conn = self.conn
        self.pending = self.pending_key = None
        committed = False
        if conn is not None and not conn.broken:
            try:
                await conn.execute(b"ROLLBACK")
                cur = await conn.execute(self.node_status_query, (self.run_id, key))
                row = await cur.fetchone()
                committed = row is not None and row[0] == "completed"
            except psycopg.Error:
                committed = False
        if not committed:
            solo = step_key if conn is not None and not conn.broken else None
            await self.discard()
            raise Uncertain(f"the checkpoint of {key} did not commit: {_describe(exc)}", solo) from None
        faults.hit("after_commit", key, self.flow_name)

    async def _rollback(self) -> None:
        if self.wire is not None:
            self.wire.detach()
        conn = self.conn
        if conn is None or conn.broken:
            await self.discard()
            return
        try:
            await conn.execute(b"ROLLBACK")
        except psycopg.Error:
            await self.discard()
