"""The dashboard's one change feed: a single server-side loop that watches the runs that open
pages show and pushes their node states to every page (server-sent events).

However many tabs are open, the database sees one poll per interval (one statement for all
watched runs) plus one read of each run that changed; pages never poll the database. A new
subscription wakes the loop at once. (Checkpoints send no NOTIFY, by design: one write fewer per
node; so the feed polls one cheap fingerprint per watched run instead of listening.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

import psycopg

from dbt_durable.store.connect import mask_dsn, open_sync
from dbt_durable.views.model import RunView, Views
from dbt_durable.views.render import duration, run_header, status_note

log = logging.getLogger("dbt_durable.ui")


def snapshot(view: RunView) -> dict[str, Any]:
    """What a run page needs to redraw its graph: each node's state and counts."""
    from dbt_durable.graph.explain import _counts

    nodes = {}
    for node_id, st in view.states.items():
        nodes[node_id] = {
            "state": st.state,
            "counts": _counts(st, with_time=False),
            "attempts": st.attempts,
            "duration": duration(st.seconds),
            "error": (st.error or "").splitlines()[0][:200] if st.error else "",
        }
    for n in view.dbt_nodes:
        nodes[n["node_id"]] = {
            "state": n["last_status"],
            "counts": "",
            "attempts": n["attempts"],
            "duration": "",
        }
    return {
        "run_id": view.run_id,
        "status": view.status,
        "header": run_header(view),
        "note": status_note(view) or "",
        "finished": view.finished,
        "progress": view.progress.text(),
        "nodes": nodes,
    }


class Hub:
    """Subscriptions by run id, fed by one polling loop (see the module docstring)."""

    def __init__(self, views: Views, interval_s: float = 0.5):
        self.views = views
        self.interval_s = interval_s
        self.subscribers: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}
        self.fingerprints: dict[str, tuple[Any, ...]] = {}
        self.latest: dict[str, dict[str, Any]] = {}
        self.polls = 0  # statements the loop sent (tests check it does not grow per tab)
        self.error: str | None = None
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()
        self._wake = asyncio.Event()

    # -- subscriptions --------------------------------------------------------------------
    async def subscribe(self, run_id: str) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=100)
        self.subscribers.setdefault(run_id, set()).add(queue)
        if run_id in self.latest:
            queue.put_nowait(self.latest[run_id])
        else:
            self._wake.set()
        return queue

    def unsubscribe(self, run_id: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        subs = self.subscribers.get(run_id)
        if subs is not None:
            subs.discard(queue)
            if not subs:
                del self.subscribers[run_id]
                self.fingerprints.pop(run_id, None)
                self.latest.pop(run_id, None)

    def _publish(self, run_id: str, message: dict[str, Any]) -> None:
        for queue in list(self.subscribers.get(run_id, ())):
            with contextlib.suppress(asyncio.QueueFull):  # a stalled page misses frames, never blocks
                queue.put_nowait(message)

    # -- the loop -------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            if self.subscribers:
                try:
                    changed = await asyncio.to_thread(self._poll, list(self.subscribers))
                    if self.error is not None:
                        self.error = None
                    for run_id, message in changed.items():
                        self.latest[run_id] = message
                        self._publish(run_id, message)
                except (psycopg.Error, OSError, Exception) as exc:  # never let the loop die
                    self.error = f"the database is unreachable: {mask_dsn(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)}"
                    log.warning("dashboard poll failed: %s", self.error)
                    self._close()
                    for run_id in list(self.subscribers):
                        self._publish(run_id, {"error": self.error})
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            conn = open_sync(self.views.settings.dsn)
            conn.autocommit = True
            self._conn = conn
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def _poll(self, run_ids: list[str]) -> dict[str, dict[str, Any]]:
        with self._lock:
            conn = self._connection()
            self.polls += 1
            rows = conn.execute(self.views.v.run_fingerprints, (run_ids,)).fetchall()
            changed: dict[str, dict[str, Any]] = {}
            seen = set()
            for row in rows:
                run_id = row[0]
                seen.add(run_id)
                fp = tuple(row[1:])
                if self.fingerprints.get(run_id) == fp and run_id in self.latest:
                    continue
                self.polls += 1
                view = self.views.run_view_on(conn, run_id)
                self.fingerprints[run_id] = fp
                changed[run_id] = snapshot(view)
            for run_id in run_ids:
                if run_id not in seen and run_id not in self.latest:
                    changed[run_id] = {"error": f"no run {run_id} visible to this role"}
            return changed

    def close(self) -> None:
        with self._lock:
            self._close()
