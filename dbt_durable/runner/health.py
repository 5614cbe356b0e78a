"""A worker's health endpoint (``dbt-durable worker --health-port PORT``).

A tiny HTTP/1.1 server on the worker's own event loop, for systemd, container and load
balancer health checks. It answers

- ``GET /healthz`` (also ``/`` and ``/health``): **200** while every worker loop of the process
  is alive and each login's database is reachable and writable, **503** otherwise (a loop that
  ended, a database that cannot be reached or is a read-only standby, or a worker draining
  after SIGTERM);
- ``GET /livez``: 200 while the loops are alive, whatever the database does. A worker waits
  out a lost database by itself (it reconnects with backoff), so a liveness probe that
  restarts the process should use this one, and a readiness or alerting check ``/healthz``.

The body is a small JSON object (status, per login: loop, database, runs claimed and
finished); it never holds a DSN or a password. Since the server runs on the worker's event
loop, a loop that is blocked does not answer at all, which a health check counts as down.

Database probes open a connection of their own (``connect_timeout`` bounded), run one
``SELECT pg_is_in_recovery()``, and are shared by concurrent requests and cached for a
second, so frequent checks cost the server little.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg

from dbt_durable.store.connect import APP_PREFIX, connect_kwargs

log = logging.getLogger("dbt_durable.health")

PROBE_TIMEOUT_S = 3.0
PROBE_CACHE_S = 1.0
MAX_REQUEST_BYTES = 8192
READ_TIMEOUT_S = 5.0
HEALTH_PATHS = ("/", "/health", "/healthz")
LIVE_PATHS = ("/livez",)


class _Stats(Protocol):
    claimed: int
    finished: dict[str, int]


class _Settings(Protocol):
    @property
    def dsn(self) -> str: ...


class WorkerLike(Protocol):
    """What the endpoint reads from a worker: its settings (for the DSN) and its stats."""

    @property
    def settings(self) -> _Settings: ...

    @property
    def stats(self) -> _Stats: ...


@dataclass
class _Probe:
    ok: bool
    detail: str
    at: float


class Health:
    """The state behind the endpoint: the worker loops (as tasks) and their databases.

    ``stale_after_s``: if a worker exposes ``last_loop_at`` (the event loop's ``time()`` at the
    start of its latest loop pass), a loop that has not passed for this long counts as stuck.
    """

    def __init__(
        self,
        workers: Sequence[WorkerLike],
        tasks: Sequence[asyncio.Task[Any]],
        probe_timeout_s: float = PROBE_TIMEOUT_S,
        stale_after_s: float = 120.0,
    ):
        self.workers = list(workers)
        self.tasks = list(tasks)
        self.probe_timeout_s = probe_timeout_s
        self.stale_after_s = stale_after_s
        self.draining = False
        self._probes: dict[str, _Probe] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def loop_state(self, index: int) -> str:
        task = self.tasks[index] if index < len(self.tasks) else None
        if task is None:
            return "not started"
        if task.done():
            if task.cancelled():
                return "stopped"
            return "failed" if task.exception() is not None else "stopped"
        last = getattr(self.workers[index], "last_loop_at", None)
        if isinstance(last, (int, float)) and asyncio.get_running_loop().time() - last > self.stale_after_s:
            return "stuck"
        return "alive"

    async def database_state(self, dsn: str) -> _Probe:
        lock = self._locks.setdefault(dsn, asyncio.Lock())
        async with lock:  # concurrent checks share one probe
            cached = self._probes.get(dsn)
            if cached is not None and time.monotonic() - cached.at < PROBE_CACHE_S:
                return cached
            probe = await self._probe(dsn)
            self._probes[dsn] = probe
            return probe

    async def _probe(self, dsn: str) -> _Probe:
        kwargs = connect_kwargs(dsn, APP_PREFIX + "health")
        kwargs["connect_timeout"] = max(1, int(self.probe_timeout_s))
        try:
            async with asyncio.timeout(self.probe_timeout_s + 1):
                conn = await psycopg.AsyncConnection.connect(dsn, **kwargs)  # type: ignore[arg-type]
                try:
                    row = await (await conn.execute(b"SELECT pg_is_in_recovery()")).fetchone()
                finally:
                    await conn.close()
        except TimeoutError:
            return _Probe(False, "unreachable: timed out", time.monotonic())
        except psycopg.Error as exc:
            # The error class only: libpq's message names hosts, and the endpoint may be public.
            return _Probe(False, f"unreachable: {type(exc).__name__}", time.monotonic())
        if row and row[0]:
            return _Probe(False, "read-only: a standby in recovery", time.monotonic())
        return _Probe(True, "reachable", time.monotonic())

    async def report(self, with_database: bool = True) -> tuple[int, dict[str, Any]]:
        """The HTTP status and JSON body of one check."""
        entries: list[dict[str, Any]] = []
        healthy = not self.draining
        dsns = [w.settings.dsn for w in self.workers]
        probes = (
            await asyncio.gather(*(self.database_state(d) for d in dict.fromkeys(dsns)))
            if with_database
            else []
        )
        by_dsn = dict(zip(dict.fromkeys(dsns), probes, strict=False))
        for i, w in enumerate(self.workers):
            state = self.loop_state(i)
            entry: dict[str, Any] = {
                "loop": state,
                "claimed": w.stats.claimed,
                "finished": dict(w.stats.finished),
            }
            healthy = healthy and state == "alive"
            if with_database:
                probe = by_dsn[w.settings.dsn]
                entry["database"] = probe.detail
                healthy = healthy and probe.ok
            entries.append(entry)
        status = "ok" if healthy else ("draining" if self.draining else "unavailable")
        return (200 if healthy else 503), {"status": status, "workers": entries}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(READ_TIMEOUT_S):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            method, path = _request_line(head)
            body: dict[str, Any]
            if method not in ("GET", "HEAD"):
                code, body = 405, {"status": "method not allowed"}
            elif path in HEALTH_PATHS:
                code, body = await self.report(with_database=True)
            elif path in LIVE_PATHS:
                code, body = await self.report(with_database=False)
            else:
                code, body = 404, {"status": "not found", "paths": [*HEALTH_PATHS, *LIVE_PATHS]}
            payload = json.dumps(body).encode()
            writer.write(
                f"HTTP/1.1 {code} {_REASONS[code]}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n".encode()
                + (b"" if method == "HEAD" else payload)
            )
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        except Exception:  # a health check must never take the worker down
            log.exception("health endpoint error")
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def _request_line(head: bytes) -> tuple[str, str]:
    first = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = first.split()
    if len(parts) < 2:
        return "", ""
    return parts[0].upper(), parts[1].split("?", 1)[0]


async def serve(health: Health, host: str, port: int) -> asyncio.Server:
    """Start the endpoint on ``host``:``port`` (0: any free port; see the server's sockets)."""
    return await asyncio.start_server(health.handle, host, port, limit=MAX_REQUEST_BYTES)


def bound_port(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])
