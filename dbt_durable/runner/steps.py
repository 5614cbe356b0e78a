"""Executing one SQL step on a pooled connection, with its checkpoint.

Transactional steps (the default) send ``BEGIN; [SET LOCAL statement_timeout]; <step SQL>``
in one round trip, then ``SELECT checkpoint_node(...); COMMIT`` in a second: the step's
effects and its checkpoint commit together or not at all, and the checkpoint is fenced by
the run's lease. ``transaction=false`` steps run in autocommit, then checkpoint separately,
so they run at least once.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg import pq, sql

from dbt_durable.errors import DurableError, LeaseLost, RunCancelled
from dbt_durable.runner import faults
from dbt_durable.runner.results import build_result


class StepSqlError(DurableError):
    """The step's own SQL failed (retryable according to the node's options).

    ``transient`` is set when the connection itself broke (server restart, terminated
    backend): the runner then retries after reconnecting, without spending an attempt.
    """

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class TypeNames:
    """Cache of type oid -> SQL type name (``format_type``), filled on demand."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}

    async def ensure(self, conn: psycopg.AsyncConnection, res: pq.abc.PGresult | None, query: str) -> None:
        if res is None or res.status != pq.ExecStatus.TUPLES_OK:
            return
        missing = [res.ftype(i) for i in range(res.nfields) if res.ftype(i) not in self.names]
        if missing:
            cur = await conn.execute(query, (missing,))
            self.names.update({oid: name for oid, name in await cur.fetchall()})


def fence_error(exc: psycopg.Error) -> DurableError | None:
    """The runner error for a failed fence (lease lost or run cancelled), else None."""
    state = exc.sqlstate or ""
    if state == "DU001":
        return LeaseLost(str(exc.diag.message_primary or exc))
    if state == "DU002":
        return RunCancelled(str(exc.diag.message_primary or exc))
    return None


def _last_result(cur: psycopg.AsyncCursor[Any]) -> pq.abc.PGresult | None:
    res = cur.pgresult
    while cur.nextset():
        res = cur.pgresult
    return res


def _checkpoint_sql(conn: psycopg.AsyncConnection, query: str, args: tuple[Any, ...]) -> str:
    literals = [sql.Literal(a) for a in args]
    return sql.SQL(query.replace("%s", "{}")).format(*literals).as_string(conn)


async def run_transactional(
    conn: psycopg.AsyncConnection,
    step_sql: str,
    timeout_s: float | None,
    checkpoint_query: str,
    checkpoint_args: list[Any],
    types: TypeNames,
    type_query: str,
    caps: tuple[int, int],
) -> dict[str, Any]:
    """Run ``step_sql`` and checkpoint its result in the same transaction; return the result.

    ``checkpoint_args`` holds a ``None`` placeholder at index 6 for the result JSON.
    """
    prefix = "BEGIN;"
    if timeout_s:
        prefix += f"SET LOCAL statement_timeout = {int(timeout_s * 1000)};"
    cur = conn.cursor()
    try:
        await cur.execute((prefix + "\n" + step_sql).encode())
    except psycopg.Error as exc:
        await _rollback(conn)
        raise StepSqlError(_describe(exc), transient=conn.broken) from None
    res = _last_result(cur)
    faults.hit("in_step", checkpoint_args[2])
    if conn.info.transaction_status != pq.TransactionStatus.INTRANS:
        await _rollback(conn)
        raise StepSqlError(
            "the step ended its own transaction (COMMIT/ROLLBACK inside a step); "
            "mark it with (transaction=false) if that is intended"
        )
    try:
        await types.ensure(conn, res, type_query)
        result = build_result(res, types.names, *caps)
        checkpoint_args[6] = json.dumps(result)
        await cur.execute(
            _checkpoint_sql(conn, checkpoint_query, tuple(checkpoint_args)).encode() + b";COMMIT"
        )
    except psycopg.Error as exc:
        await _rollback(conn)
        raise fence_error(exc) or StepSqlError(_describe(exc), transient=conn.broken) from None
    except BaseException:
        await _rollback(conn)
        raise
    return result


async def run_autocommit(
    conn: psycopg.AsyncConnection,
    step_sql: str,
    timeout_s: float | None,
    types: TypeNames,
    type_query: str,
    caps: tuple[int, int],
) -> dict[str, Any]:
    """Run ``step_sql`` outside a transaction block (VACUUM, CREATE INDEX CONCURRENTLY)."""
    cur = conn.cursor()
    try:
        if timeout_s:
            await cur.execute(f"SET statement_timeout = {int(timeout_s * 1000)}".encode())
        await cur.execute(step_sql.encode())
        res = _last_result(cur)
        await types.ensure(conn, res, type_query)
        return build_result(res, types.names, *caps)
    except psycopg.Error as exc:
        raise StepSqlError(_describe(exc), transient=conn.broken) from None
    finally:
        if timeout_s and not conn.broken:
            try:
                await conn.execute(b"RESET statement_timeout")
            except psycopg.Error:
                pass


async def _rollback(conn: psycopg.AsyncConnection) -> None:
    if conn.broken:
        return
    try:
        await conn.execute(b"ROLLBACK")
    except psycopg.Error:
        pass


def _describe(exc: psycopg.Error) -> str:
    diag = exc.diag
    text = diag.message_primary or str(exc).strip()
    if exc.sqlstate:
        text = f"{text} (SQLSTATE {exc.sqlstate})"
    if diag.message_detail:
        text += f"\nDETAIL: {diag.message_detail}"
    if diag.message_hint:
        text += f"\nHINT: {diag.message_hint}"
    return text
