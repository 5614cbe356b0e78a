"""A lane's libpq-level round trips: psycopg's errors, server-side cancel, a closed socket."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from dbt_durable.runner.wire import Wire
from tests.conftest import Space


async def _connect(space: Space) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(space.dsn, autocommit=True)


def test_results_of_every_statement_and_psycopg_errors(space: Space) -> None:
    async def go() -> None:
        conn = await _connect(space)
        wire = Wire(conn)
        results = await wire.query(b"SELECT 1 AS a; SELECT 'x' AS b, 2 AS c")
        assert [(r.ntuples, r.nfields) for r in results] == [(1, 1), (1, 2)]
        with pytest.raises(psycopg.errors.DivisionByZero) as err:
            await wire.query(b"SELECT 1; SELECT 1/0; SELECT 3")
        assert err.value.sqlstate == "22012" and "division by zero" in str(err.value)
        assert (await wire.query(b"SELECT 42"))[0].get_value(0, 0) == b"42"  # still usable
        wire.detach()
        await conn.close()

    asyncio.run(go())


def test_a_cancelled_round_trip_stops_the_statement_on_the_server(space: Space) -> None:
    async def go() -> None:
        conn = await _connect(space)
        pid = conn.info.backend_pid
        wire = Wire(conn)
        task = asyncio.create_task(wire.query(b"SELECT pg_sleep(30)"))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        state = space.query("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,))
        assert state in ([("idle",)], [])  # idle, or closed if draining failed; never still active
        if not conn.closed:
            assert (await wire.query(b"SELECT 1"))[0].get_value(0, 0) == b"1"
            wire.detach()
            await conn.close()

    asyncio.run(go())


def test_a_closed_socket_with_no_round_trip_waiting_is_let_go(space: Space) -> None:
    async def go() -> None:
        conn = await _connect(space)
        wire = Wire(conn)
        await wire.query(b"SELECT 1")  # now watching the socket
        space.query("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        for _ in range(100):  # the loop sees the closed socket and the wire stops watching it
            await asyncio.sleep(0.02)
            if wire._fd is None:
                break
        assert wire._fd is None
        with pytest.raises(psycopg.OperationalError):
            await wire.query(b"SELECT 1")
        assert conn.broken
        await conn.close()

    asyncio.run(go())
