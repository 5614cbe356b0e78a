"""A step's attempts: dispatch to its kind, retries with backoff, and failures recorded once.

Which errors retry: a step's own errors (SQL errors, HTTP 5xx and transport errors, timeouts)
spend an attempt and retry up to ``retries`` times with exponential backoff and jitter. A
broken connection (a server restart, a terminated backend) retries without spending an
attempt, for up to ``reconnect_timeout_s``. Errors that cannot change on a retry (a result over
its cap, a reference that cannot be bound, a denied or malformed request, a value that cannot
be encoded) fail the step at once. Lease loss, cancel and an uncertain commit stop the walk.

A throttled HTTP answer (429, or 503 with ``Retry-After``) spends no attempt while the step's
``throttle_wait`` budget lasts: the node is marked ``waiting`` with its ``wake_at`` (as a timer
is) and the run parks when the wait is longer than ``park_after_s`` (:func:`_throttled`).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import PoolTimeout

from dbt_durable.errors import (
    BindingError,
    DurableError,
    LeaseLost,
    ResultTooLarge,
    RunCancelled,
    StepFailed,
)
from dbt_durable.flow import ast as A
from dbt_durable.flow.parser import parse_duration
from dbt_durable.runner import steps, waits
from dbt_durable.runner.backoff import Backoff
from dbt_durable.runner.http import EgressDenied, RequestInvalid, Throttled
from dbt_durable.runner.http_limits import DEFAULT_THROTTLE_WAIT_S
from dbt_durable.runner.http_step import http_step
from dbt_durable.runner.lane import Lane, Uncertain
from dbt_durable.runner.sql_step import sql_step
from dbt_durable.runner.values import BreakLoop, NodeProgress, Parked, Step
from dbt_durable.store.status import NodeStatus

if TYPE_CHECKING:
    from dbt_durable.runner.run import RunExecution

MAX_BACKOFF_S = 300.0
_FINAL = (ResultTooLarge, BindingError, EgressDenied, RequestInvalid)


async def run_step(run: RunExecution, step: Step, lane: Lane) -> Any:
    """Execute ``step`` until it succeeds or its retries are spent (then :class:`StepFailed`)."""
    earlier = run.state.progress.get(step.key)  # a failed or parked execution resumes its count
    attempt = earlier.attempts if earlier is not None else 0
    reconnect = Backoff(0.1, 2.0, run.settings.reconnect_timeout_s)
    throttles = 0
    while True:
        attempt += 1
        try:
            return await _attempt(run, replace(step, attempt=attempt), lane)
        except (LeaseLost, RunCancelled, Uncertain, asyncio.CancelledError, Parked, BreakLoop):
            raise
        except steps.StepSqlError as exc:
            if exc.transient:
                await lane.discard()
                if await reconnect.wait():  # the attempt is not spent
                    attempt -= 1
                    continue
            error: Exception = exc
        except Throttled as exc:
            throttles += 1
            pause = await _throttled(run, step, attempt, lane, exc, throttles)
            if pause is not None:  # within the budget: the attempt is not spent
                attempt -= 1
                await asyncio.sleep(pause)
                continue
            error = exc
        except _FINAL as exc:
            raise await _failed(run, step, attempt, lane, str(exc)) from None
        except (PoolTimeout, psycopg.Error, DurableError, OSError, TimeoutError) as exc:
            error = exc
        except Exception as exc:  # e.g. a value that cannot be encoded: retrying cannot help
            raise await _failed(run, step, attempt, lane, f"{type(exc).__name__}: {exc}"[:2000]) from None
        message = str(error) or type(error).__name__
        if isinstance(error, PoolTimeout):
            message = f"no database connection free within {run.settings.pool_timeout_s}s: {message}"
        if attempt > step.spec.retries:
            raise await _failed(run, step, attempt, lane, message) from None
        # Give the strand's connection back first: with a full pool, writing the retry event
        # would otherwise wait on the connection this strand holds.
        await lane.release()
        await run.writer.event(step.key, "node_retry", {"attempt": attempt, "error": message})
        delay = min(MAX_BACKOFF_S, step.spec.backoff_s * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
        await asyncio.sleep(delay)


async def _throttled(
    run: RunExecution, step: Step, attempt: int, lane: Lane, exc: Throttled, throttles: int
) -> float | None:
    """Wait out a throttled answer durably; the seconds to sleep, or None once the budget is spent.

    The node is marked ``waiting`` until ``wake_at`` (the server's ``Retry-After``, else the
    step's backoff doubled per throttle), with the attempts spent so far; a wait longer than
    ``park_after_s`` parks the run (:class:`Parked`). The budget, ``throttle_wait``, runs from
    the node's first ``wake_at`` (the state keeps the first one), so it holds across resumes.
    """
    budget = parse_duration(step.ast.option("throttle_wait", DEFAULT_THROTTLE_WAIT_S) or 0)
    delay = exc.retry_after_s
    if delay is None:
        delay = min(MAX_BACKOFF_S, step.spec.backoff_s * 2 ** (throttles - 1)) * (0.5 + random.random() / 2)
    now = run.engine.clock()
    wake_at = now + timedelta(seconds=delay)
    earlier = run.state.progress.get(step.key)
    first = earlier.wake_at if earlier is not None and earlier.status == NodeStatus.WAITING else None
    if (wake_at - (first or wake_at)).total_seconds() > budget or delay > budget:
        return None
    await lane.release()
    await run.writer.mark(
        step.key, step.node_id, step.kind, NodeStatus.WAITING, attempt - 1, str(exc), wake_at
    )
    run.state.progress[step.key] = NodeProgress(NodeStatus.WAITING, None, first or wake_at, attempt - 1)
    await run.writer.event(
        step.key,
        "node_throttled",
        {"error": str(exc), "retry_after_s": delay, "wake_at": wake_at.isoformat()},
    )
    park = run.settings.park_after_s
    if park is not None and delay > park:
        raise Parked(wake_at, f"{step.kind} at node {step.key} throttled until {wake_at.isoformat()}")
    return delay


async def _failed(run: RunExecution, step: Step, attempt: int, lane: Lane, message: str) -> StepFailed:
    """Record the step as failed (after giving its connection back); the error to raise."""
    await lane.release()
    await run.writer.mark(step.key, step.node_id, step.kind, NodeStatus.FAILED, attempt, message, None)
    return StepFailed(step.key, message)


async def _attempt(run: RunExecution, step: Step, lane: Lane) -> Any:
    ast = step.ast
    if isinstance(ast, A.Sql):
        return await sql_step(run, step, lane)
    if isinstance(ast, (A.Sleep, A.WaitSchedule)):
        return await waits.timer(run, step)
    if isinstance(ast, A.WaitSignal):
        return await waits.wait_signal(run, step)
    if isinstance(ast, A.Http):
        return await http_step(run, step)
    raise DurableError(f"cannot execute node kind {A.kind_of(ast)}")
