"""One simple-protocol round trip on an async psycopg connection, driven through ``psycopg.pq``.

A lane sends one string per step (previous checkpoint, COMMIT, BEGIN, the step). Going
through ``AsyncCursor.execute`` costs about 35 µs of CPU and 50 µs of wall time per round
trip more than driving libpq directly (a timer, a write poll and cursor bookkeeping per
call; measured in docs/BENCHMARKS.md), which is a tenth of a step. This module does only
that round trip, with psycopg's own semantics where they matter:

- errors are psycopg's exception classes (``sqlstate``, ``diag``), raised for the first
  failed statement (the server runs none after it);
- a broken connection raises :class:`psycopg.OperationalError` and leaves ``conn.broken`` set;
- a cancelled task cancels the statement on the server and drains the connection before
  re-raising, so the connection is idle (or closed) afterwards.
"""

from __future__ import annotations

import asyncio

import psycopg
from psycopg import errors, pq

_OK = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK, pq.ExecStatus.EMPTY_QUERY)


async def simple_query(conn: psycopg.AsyncConnection, query: bytes) -> list[pq.abc.PGresult]:
    """Send ``query`` (one or more statements) and return the result of each statement."""
    async with conn.lock:
        pgconn = conn.pgconn
        try:
            pgconn.send_query(query)
            while pgconn.flush():
                await _ready(pgconn.socket, writing=True)
            results = await _results(pgconn)
        except asyncio.CancelledError:
            await _cancel_and_drain(conn)
            raise
    for res in results:
        if res.status not in _OK:
            raise errors.error_from_result(res, encoding=conn.info.encoding)
    return results


async def _results(pgconn: pq.abc.PGconn) -> list[pq.abc.PGresult]:
    results: list[pq.abc.PGresult] = []
    while True:
        pgconn.consume_input()
        if pgconn.is_busy():
            await _ready(pgconn.socket, writing=False)
            continue
        res = pgconn.get_result()
        if res is None:
            return results
        results.append(res)


async def _ready(fileno: int, writing: bool) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    (loop.add_writer if writing else loop.add_reader)(fileno, _wake, ready)
    try:
        await ready
    finally:
        (loop.remove_writer if writing else loop.remove_reader)(fileno)


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


async def _cancel_and_drain(conn: psycopg.AsyncConnection) -> None:
    """After an interrupted round trip: stop the statement on the server and read what is left."""
    pgconn = conn.pgconn
    if pgconn.status != pq.ConnStatus.OK or pgconn.transaction_status != pq.TransactionStatus.ACTIVE:
        return
    try:
        await asyncio.shield(_cancel_then_read(conn))
    except (psycopg.Error, OSError, asyncio.CancelledError):
        await conn.close()  # the pool discards a closed connection


async def _cancel_then_read(conn: psycopg.AsyncConnection) -> None:
    await conn.cancel_safe(timeout=5.0)
    await asyncio.wait_for(_results(conn.pgconn), timeout=10.0)
