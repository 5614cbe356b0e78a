"""HTTP flow control: a concurrency limit and a request rate per host, and ``Retry-After``.

``http(...) with (concurrency=4, rate='50/s')`` lets at most 4 requests to the step's host be in
flight at once from this runner process, and starts at most 50 a second (evenly spaced: a
request waits for its slot, so a burst never exceeds the rate). Every HTTP step to the same host
and port with the same settings shares one limiter, across runs and loop iterations, so a
worker's runs together respect the provider's limits. These waits are short and in-process.

A throttled answer (429, or 503 with ``Retry-After``) waits durably instead: the attempt
raises :class:`~dbt_durable.runner.http.Throttled`, and :mod:`dbt_durable.runner.attempts`
marks the node ``waiting`` with its ``wake_at`` (parking the run if that is far off), without
spending an attempt while the step's ``throttle_wait`` budget lasts.
"""

from __future__ import annotations

import asyncio
import functools
import re
import ssl
import time
import weakref
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar
from urllib.parse import urlsplit

from dbt_durable.flow import ast as A

T = TypeVar("T")

RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$", re.IGNORECASE)
_PER = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}
DEFAULT_THROTTLE_WAIT_S = 900.0  # 15 minutes of 429/503 waits before they count as failures


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's default TLS context, made once: making one per request (httpx does, for each
    new client) loads the CA bundle, about 80 ms of blocking work on the event loop, which
    would stall every other strand and make ``rate=`` spacing bunch up."""
    import httpx

    return httpx.create_ssl_context()


def parse_rate(text: str) -> float:
    """Requests per second of ``'50/s'``, ``'3000/m'`` or ``'10000/h'``; ``ValueError`` otherwise."""
    m = RATE.match(str(text))
    if m is None or float(m.group(1)) <= 0:
        raise ValueError(f"bad rate {text!r}: write requests per unit, e.g. '50/s', '3000/m'")
    return float(m.group(1)) / _PER[m.group(2).lower()]


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date), or None."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass
class HostLimiter:
    """At most ``concurrency`` requests at once, and starts spaced ``1/rate`` seconds apart."""

    concurrency: int | None
    rate: float | None
    _slots: asyncio.Semaphore | None = None
    _next_start: float = 0.0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        if self.concurrency is not None:
            self._slots = asyncio.Semaphore(self.concurrency)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one request slot (concurrency) after waiting for the next start time (rate)."""
        if self._slots is not None:
            await self._slots.acquire()
        try:
            if self.rate is not None:
                async with self._lock:
                    now = time.monotonic()
                    start = max(now, self._next_start)
                    self._next_start = start + 1.0 / self.rate
                if start > now:
                    await asyncio.sleep(start - now)
            yield
        finally:
            if self._slots is not None:
                self._slots.release()


# One registry per event loop: asyncio primitives belong to the loop they are used on, and a
# process may run several loops one after another (each Client.start has its own).
_LIMITERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[object, ...], HostLimiter]] = (
    weakref.WeakKeyDictionary()
)


@asynccontextmanager
async def request_slot(
    host: str, port: int, concurrency: int | None, rate: float | None
) -> AsyncIterator[None]:
    """Hold a slot of the limiter shared by every request to ``host:port`` with these limits."""
    if concurrency is None and rate is None:
        yield
        return
    per_loop = _LIMITERS.setdefault(asyncio.get_running_loop(), {})
    key = (host.lower(), port, concurrency, rate)
    limiter = per_loop.get(key)
    if limiter is None:
        limiter = per_loop[key] = HostLimiter(concurrency, rate)
    async with limiter.slot():
        yield


async def limited(ast: A.Http, url: str, request: Awaitable[T]) -> T:
    """Await ``request`` (the step's send) in a slot of the step's ``concurrency``/``rate``."""
    concurrency, rate = ast.option("concurrency"), ast.option("rate")
    if concurrency is None and rate is None:
        return await request
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        host, port = url, 0  # run_http refuses the URL; the slot only has to exist
    async with request_slot(
        host, port, int(concurrency) if concurrency else None, parse_rate(str(rate)) if rate else None
    ):
        return await request
