"""Low-level pieces of SQL steps: errors, type names, inlined checkpoints, autocommit steps.

Transactional steps run through :class:`dbt_durable.runner.lane.Lane`. ``transaction=false``
steps run here in autocommit, then checkpoint separately, so they run at least once.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import pq

from dbt_durable.errors import DurableError
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

    def missing(self, res: pq.abc.PGresult | None) -> list[int]:
        """Type oids of ``res``'s columns whose names are not known yet."""
        if res is None or res.status != pq.ExecStatus.TUPLES_OK:
            return []
        return [oid for oid in map(res.ftype, range(res.nfields)) if oid not in self.names]

    async def ensure(self, conn: psycopg.AsyncConnection, res: pq.abc.PGresult | None, query: str) -> None:
        """Learn the names of ``res``'s column types (one query, only for unknown oids)."""
        missing = self.missing(res)
        if missing:
            cur = await conn.execute(query, (missing,))
            self.names.update({oid: name for oid, name in await cur.fetchall()})


def _last_result(cur: psycopg.AsyncCursor[Any]) -> pq.abc.PGresult | None:
    res = cur.pgresult
    while cur.nextset():
        res = cur.pgresult
    return res


def text_literal(value: Any) -> str:
    """A SQL literal that reads the same whatever the session's standard_conforming_strings
    (a step can change it): an E'' string, with backslashes and quotes escaped. NUL cannot
    occur (jsonb and the ids reject it)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    if "\x00" in text:
        raise DurableError("a checkpoint value contains a NUL character")
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


class CheckpointWriter:
    """Builds a lane's ``checkpoint_node(...)`` statements for one run and owner.

    The constant literals (run id, owner) are rendered once; each checkpoint then only renders
    its own key, attempt, result and start time.
    """

    def __init__(self, query: str, run_id: str, owner: str):
        # query: "SELECT <schema>.checkpoint_node(%s, %s, %s, %s, %s, %s, %s, %s)"
        head, _, _ = query.partition("%s")
        self.prefix = f"{head}{text_literal(run_id)}, {text_literal(owner)}, "

    def statement(self, key: str, node_id: str, attempt: int, result_json: str, started_at: Any) -> bytes:
        """The statement that checkpoints SQL step ``key`` (its result already JSON text)."""
        return (
            f"{self.prefix}{text_literal(key)}, {text_literal(node_id)}, 'sql', {int(attempt)}, "
            f"{text_literal(result_json)}, {text_literal(started_at)})"
        ).encode()


async def run_autocommit(
    conn: psycopg.AsyncConnection,
    step_sql: str,
    timeout_s: float | None,
    types: TypeNames,
    type_query: str,
    caps: tuple[int, int],
) -> dict[str, Any]:
    """Run ``step_sql`` outside a transaction block (VACUUM, CREATE INDEX CONCURRENTLY).

    Rows are read under the result caps (memory stays bounded, see :mod:`runner.wire`);
    nothing else may be watching the connection (detach the lane's wire first)."""
    from dbt_durable.runner.wire import Wire

    wire = Wire(conn)
    try:
        if timeout_s:
            await wire.query(f"SET statement_timeout = {int(timeout_s * 1000)}".encode())
        res = (await wire.query(step_sql.encode(), caps))[-1]
        wire.detach()
        await types.ensure(conn, res, type_query)
        return build_result(res, types.names, *caps)
    except psycopg.Error as exc:
        raise StepSqlError(_describe(exc), transient=conn.broken) from None
    finally:
        wire.detach()
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
