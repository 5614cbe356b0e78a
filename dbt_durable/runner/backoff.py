"""The one reconnect helper: exponential backoff, capped, within an optional deadline."""

from __future__ import annotations

import asyncio


class Backoff:
    """Delays of ``first``, doubling up to ``cap`` seconds; :meth:`wait` says False (without
    sleeping) once ``within_s`` seconds have passed since the first wait or the last reset."""

    def __init__(self, first: float, cap: float, within_s: float | None = None):
        self.first = first
        self.cap = cap
        self.within_s = within_s
        self.delay = first
        self._deadline: float | None = None

    def reset(self) -> None:
        """The operation succeeded: the next failure starts over."""
        self.delay = self.first
        self._deadline = None

    def expired(self) -> bool:
        """Whether the deadline has passed (starting it on first use)."""
        if self.within_s is None:
            return False
        now = asyncio.get_running_loop().time()
        if self._deadline is None:
            self._deadline = now + self.within_s
        return now > self._deadline

    async def wait(self) -> bool:
        """Sleep the next delay; False (and no sleep) if the deadline has passed."""
        if self.expired():
            return False
        await asyncio.sleep(self.delay)
        self.delay = min(max(self.delay * 2, 0.01), self.cap)
        return True
