"""Durable waits: timers (``sleep``, ``wait_for_schedule``) and ``wait_for_signal``.

A wait's deadline is stored (the node is marked ``waiting`` with ``wake_at``) before it
starts, so a restarted runner waits for the same instant. A wait longer than the runner's
``park_after_s`` raises :class:`Parked`: the run is parked and holds nothing until it is due.

Results have pg_durable's shapes: ``sleep`` gives ``{"slept": true, "seconds": n}``,
``wait_for_schedule`` ``{"scheduled": true}`` (both also carry ``woke_at``, the instant the
timer was due), and ``wait_for_signal`` ``{"signal_name", "timed_out", "data"}``, where ``data``
is the signal's payload (JSON, or a JSON string for a plain-text payload; null on a timeout).
"""

from __future__ import annotations

import asyncio
import zoneinfo
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from croniter import croniter

from dbt_durable.flow import ast as A
from dbt_durable.runner.values import NodeProgress, Parked, Step
from dbt_durable.store.status import NodeStatus

if TYPE_CHECKING:
    from dbt_durable.runner.run import RunExecution


def wake_time(ast: A.Node, now: datetime) -> datetime:
    """When timer ``ast`` started at ``now`` is due."""
    if isinstance(ast, A.Sleep):
        return now + timedelta(seconds=ast.seconds)
    assert isinstance(ast, A.WaitSchedule)
    tz = zoneinfo.ZoneInfo(ast.tz or "UTC")
    nxt: datetime = croniter(ast.cron, now.astimezone(tz)).get_next(datetime)
    return nxt.astimezone(UTC)


async def timer(run: RunExecution, step: Step) -> Any:
    """Wait until the timer's stored wake-up time; its result is ``{"woke_at": ...}``."""
    st = run.state
    parked = st.progress.get(step.key)
    wake_at = parked.wake_at if parked is not None and parked.wake_at else None
    clock = run.engine.clock
    if wake_at is None:
        wake_at = wake_time(step.ast, clock())
        await run.writer.mark(step.key, step.node_id, step.kind, NodeStatus.WAITING, 1, None, wake_at)
        st.progress[step.key] = NodeProgress(NodeStatus.WAITING, None, wake_at, 1)
    delay = (wake_at - clock()).total_seconds()
    park = run.settings.park_after_s
    if park is not None and delay > park:
        raise Parked(wake_at, f"{step.kind} at node {step.key} until {wake_at.isoformat()}")
    if delay > 0:
        await asyncio.sleep(delay)
    result: dict[str, Any]
    if isinstance(step.ast, A.Sleep):
        seconds = step.ast.seconds
        result = {"slept": True, "seconds": int(seconds) if seconds == int(seconds) else seconds}
    else:
        result = {"scheduled": True}
    result["woke_at"] = wake_at.isoformat()
    await run.writer.checkpoint(step.key, step.node_id, step.kind, 1, result)
    return result


async def wait_signal(run: RunExecution, step: Step) -> Any:
    """Consume the oldest buffered signal of the step's name (signals sent before the wait
    are kept); with a timeout, give ``timed_out = true`` when it passes."""
    ast = step.ast
    assert isinstance(ast, A.WaitSignal)
    st = run.state
    clock: Callable[[], datetime] = run.engine.clock
    parked = st.progress.get(step.key)
    deadline = parked.wake_at if parked is not None else None
    if deadline is None and ast.timeout_s is not None:
        deadline = clock() + timedelta(seconds=ast.timeout_s)
    if parked is None:
        await run.writer.mark(step.key, step.node_id, step.kind, NodeStatus.WAITING, 1, None, deadline)
        st.progress[step.key] = NodeProgress(NodeStatus.WAITING, None, deadline, 1)
    poll = 0.05
    started = clock()
    params = {"exec_key": step.key, "run_id": run.run_id, "name": ast.name, "owner": run.engine.owner}
    while True:
        async with run.writer.connection() as conn:
            async with conn.transaction():
                row = await (await conn.execute(run.q.consume_signal, params)).fetchone()
                if row is not None:
                    result = {"signal_name": ast.name, "timed_out": False, "data": row[0]}
                    await run.writer.checkpoint_on(conn, step.key, step.node_id, step.kind, 1, result)
                    return result
        park = run.settings.park_after_s
        if park is not None and (clock() - started).total_seconds() >= park:
            raise Parked(deadline, f"wait_for_signal('{ast.name}') at node {step.key}", ast.name)
        if deadline is not None and clock() >= deadline:
            result = {"signal_name": ast.name, "timed_out": True, "data": None}
            await run.writer.checkpoint(step.key, step.node_id, step.kind, 1, result)
            return result
        await asyncio.sleep(poll)
        poll = min(poll * 2, 1.0)
