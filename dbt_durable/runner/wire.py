"""One lane's simple-protocol round trips, driven through ``psycopg.pq`` (libpq) directly.

A lane sends one string per step (previous checkpoint, COMMIT, BEGIN, the step). Going
through ``AsyncCursor.execute`` costs about 35 µs of CPU and 50 µs of wall time more per
round trip than driving libpq directly (a timer, a write poll, cursor bookkeeping), which is
a tenth of a step; registering the socket with the event loop for each round trip costs two
more system calls. A :class:`Wire` does only that round trip, with psycopg's semantics where
they matter:

- errors are psycopg's exception classes (``sqlstate``, ``diag``), raised for the first
  failed statement (the server runs none after it);
- a broken connection raises :class:`psycopg.OperationalError` and leaves ``conn.broken`` set;
- a cancelled task cancels the statement on the server and drains the connection before
  re-raising, so the connection is idle (or closed) afterwards;
- with ``caps`` (rows, bytes), rows arrive in chunks (libpq's chunked-rows mode) and a
  statement whose rows pass a cap is cancelled on the server: :class:`ResultTooLarge` is
  raised once the connection is drained, and memory never holds more than the cap and one
  chunk, however many rows the statement would have returned.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Awaitable, Callable

import psycopg
from psycopg import errors, pq

from dbt_durable.errors import ResultTooLarge

CHUNK_ROWS = 1000

_OK = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK, pq.ExecStatus.EMPTY_QUERY)


class Wire:
    """Round trips on one connection. While attached (from the first :meth:`query` on), the
    event loop watches the connection's socket for this wire alone: call :meth:`detach` before
    anything else uses the connection (psycopg watches the same socket itself) and before the
    connection goes back to the pool or is closed."""

    def __init__(self, conn: psycopg.AsyncConnection):
        self.conn = conn
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None

    async def query(self, query: bytes, caps: tuple[int, int] | None = None) -> list[pq.abc.PGresult]:
        """Send ``query`` (one or more statements) and return the result of each statement;
        with ``caps`` (max rows, max bytes of one statement's rows), see the module docstring."""
        conn = self.conn
        pgconn = conn.pgconn
        async with conn.lock:
            try:
                pgconn.send_query(query)
                if caps is not None:
                    pgconn.set_chunked_rows_mode(CHUNK_ROWS)
                while pgconn.flush():
                    await _ready(pgconn.socket, writing=True)
                if caps is None:
                    results = await _results(pgconn, self._readable)
                else:
                    results = await _capped_results(conn, self._readable, *caps)
            except asyncio.CancelledError:
                self.detach()
                await _cancel_and_drain(conn)
                raise
            except BaseException:
                self.detach()
                raise
        for res in results:
            if res.status not in _OK:
                raise errors.error_from_result(res, encoding=conn.info.encoding)
        return results

    def detach(self) -> None:
        """Stop watching the socket (idempotent); the next :meth:`query` watches it again."""
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
        self._fd = self._loop = self._waiter = None

    async def _readable(self) -> None:
        if self._fd is None:
            self._loop = asyncio.get_running_loop()
            self._fd = self.conn.pgconn.socket
            self._loop.add_reader(self._fd, self._wake)
        assert self._loop is not None
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is None:
            # Input with no round trip waiting (a closed socket, say): stop watching, so that a
            # level-triggered event cannot spin the loop; the next query watches again.
            self.detach()
            return
        if waiter.done():
            return
        # Wake the query only for a whole result: a readiness event can also be stale (the
        # loop polls again before the woken task has read the socket), and waking for it
        # costs a loop cycle per round trip.
        pgconn = self.conn.pgconn
        try:
            pgconn.consume_input()
            if pgconn.is_busy():
                return
        except psycopg.Error:
            pass  # the woken query reads again and raises it
        waiter.set_result(None)


async def _results(pgconn: pq.abc.PGconn, readable: Callable[[], Awaitable[None]]) -> list[pq.abc.PGresult]:
    results: list[pq.abc.PGresult] = []
    while True:
        pgconn.consume_input()
        if pgconn.is_busy():
            await readable()
            continue
        res = pgconn.get_result()
        if res is None:
            return results
        results.append(res)


class ChunkedResult:
    """One statement's rows received in chunks, read like the ``PGresult`` of the whole."""

    def __init__(self, chunks: list[pq.abc.PGresult], final: pq.abc.PGresult):
        self.status = final.status
        self._final = final
        self._chunks = chunks
        self._head = chunks[0] if chunks else final
        self._starts: list[int] = []
        total = 0
        for chunk in chunks:
            self._starts.append(total)
            total += chunk.ntuples
        self.ntuples = total
        self.nfields = self._head.nfields
        self.command_tuples = final.command_tuples

    def fname(self, column: int) -> bytes | None:
        return self._head.fname(column)

    def ftype(self, column: int) -> int:
        return self._head.ftype(column)

    def get_value(self, row: int, column: int) -> bytes | None:
        i = bisect.bisect_right(self._starts, row) - 1
        return self._chunks[i].get_value(row - self._starts[i], column)


async def _capped_results(
    conn: psycopg.AsyncConnection, readable: Callable[[], Awaitable[None]], max_rows: int, max_bytes: int
) -> list[pq.abc.PGresult]:
    pgconn = conn.pgconn
    results: list[pq.abc.PGresult] = []
    chunks: list[pq.abc.PGresult] = []
    rows = size = 0
    over: str | None = None
    while True:
        pgconn.consume_input()
        if pgconn.is_busy():
            await readable()
            continue
        res = pgconn.get_result()
        if res is None:
            break
        if res.status == pq.ExecStatus.TUPLES_CHUNK:
            if over is not None:
                continue  # drained and dropped: the statement is being cancelled
            rows += res.ntuples
            size += sum(
                len(v) for r in range(res.ntuples) for c in range(res.nfields) if (v := res.get_value(r, c))
            )
            chunks.append(res)
            if rows > max_rows or size > max_bytes:
                over = (
                    f"result has {rows} rows, over the cap of {max_rows} (max_result_rows; reading stopped there)"
                    if rows > max_rows
                    else f"result is over the cap of {max_bytes} bytes (max_result_bytes)"
                )
                chunks.clear()
                pgconn.get_cancel().cancel()  # blocking but brief: one cancel request packet
            continue
        if res.status == pq.ExecStatus.TUPLES_OK and over is None:
            results.append(ChunkedResult(chunks, res) if chunks else res)  # type: ignore[arg-type]
        elif over is None:
            results.append(res)
        chunks, rows, size = [], 0, 0
    if over is not None:
        raise ResultTooLarge(f"{over}; write large results to a table instead of binding them")
    return results


async def _ready(fileno: int, writing: bool) -> None:
    """Wait once for ``fileno`` to be writable (or readable), registering it for this wait only."""
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
    except (psycopg.Error, OSError, asyncio.CancelledError, TimeoutError):
        await conn.close()  # the pool discards a closed connection


async def _cancel_then_read(conn: psycopg.AsyncConnection) -> None:
    await conn.cancel_safe(timeout=5.0)
    socket = conn.pgconn.socket
    await asyncio.wait_for(_results(conn.pgconn, lambda: _ready(socket, writing=False)), timeout=10.0)
