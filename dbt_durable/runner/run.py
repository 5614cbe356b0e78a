"""One runner's hold on one run: claim it, walk it (or execute its registered kind), keep its
lease, and finish it with its outcome.

Guarantees: the run is executed only under its lease and advisory lock (see
:mod:`dbt_durable.runner.lease`); every outcome is written by ``finish_run``, which refuses a
runner that lost the lease; any exception other than a lost database fails the run with its
error recorded, never the process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import PoolTimeout

from dbt_durable.bulk import bulk_allocation
from dbt_durable.errors import ConnectionFailed, LeaseLost, RunCancelled, StepFailed
from dbt_durable.graph.build import ROOT, FlowGraph, compile_flow, load_flow
from dbt_durable.runner import kinds, lease, text_runs
from dbt_durable.runner.backoff import Backoff
from dbt_durable.runner.lane import Uncertain
from dbt_durable.runner.tasks import cancel_and_wait
from dbt_durable.runner.values import BreakLoop, Disconnected, NodeProgress, Outcome, Parked, RunState
from dbt_durable.runner.walker import Walker
from dbt_durable.store.nodes import NodeWriter
from dbt_durable.store.runs import RunRow
from dbt_durable.store.status import RunStatus

if TYPE_CHECKING:
    from dbt_durable.runner.engine import Engine

log = logging.getLogger("dbt_durable.runner")

_NO_FLOW = "'SELECT 1'"  # the placeholder graph of runs of a registered kind


class RunExecution:
    """Claim, walk, finish one run. ``state``, ``row`` and ``writer`` exist once claimed."""

    echo: Callable[[str], None] | None = None
    state: RunState
    row: RunRow

    def __init__(self, engine: Engine, run_id: str):
        self.engine = engine
        self.settings = engine.settings
        self.q = engine.q
        self.run_id = run_id
        self.cancel_event = asyncio.Event()
        self.lost_event = asyncio.Event()
        self.flow_name = ""
        self.kind: kinds.RunKind | None = None
        self.solo: set[str] = set()  # steps whose checkpoint-before is committed separately
        assert engine.pool is not None
        self.writer = NodeWriter(
            engine.pool, self.q, run_id, engine.owner, engine.clock, self.settings.pool_timeout_s
        )
        self.walker = Walker(self)

    async def run(self, retry_failed: bool, orphaned: bool = False) -> Outcome:
        """Execute the run until it completes, fails, is cancelled, parks or is lost
        (``orphaned``: see :func:`dbt_durable.runner.lease.claim`)."""
        assert self.engine.ctl_pool is not None
        async with self.engine.ctl_pool.connection() as ctl:
            return await self._run_with(ctl, retry_failed, orphaned)

    async def _run_with(self, ctl: psycopg.AsyncConnection, retry_failed: bool, orphaned: bool) -> Outcome:
        s = self.settings
        try:
            got = await lease.claim(
                ctl,
                self.q,
                s.schema,
                self.run_id,
                self.engine.owner,
                s.lease_ttl_s,
                s.claim_wait_s,
                retry_failed,
                orphaned,
            )
            run = self.row = got.run
            if not got.taken:
                return Outcome(self.run_id, got.run.status, run.result, run.error, run.failed_node)
            self.flow_name = run.flow_name
            if run.kind != "flow":
                self.kind = kinds.find(run.kind)
                if self.kind is None:
                    self.state = RunState(self.run_id, compile_flow(_NO_FLOW, validated=True), {}, {})
                    return await self._finish(
                        ctl,
                        RunStatus.FAILED,
                        None,
                        f"this runner cannot execute runs of kind {run.kind!r}",
                        ROOT,
                    )
            try:
                flow = (
                    compile_flow(_NO_FLOW, validated=True) if self.kind else await self._load_flow(ctl, run)
                )
            except (psycopg.Error, PoolTimeout):
                raise
            except Exception as exc:  # a stored plan or text that does not load fails its own run
                self.state = RunState(self.run_id, compile_flow(_NO_FLOW, validated=True), {}, {})
                message = f"the run's stored plan cannot be loaded: {type(exc).__name__}: {exc}"
                return await self._finish(ctl, RunStatus.FAILED, None, message[:2000], ROOT)
            progress = await self._load_progress(ctl, flow)
            self.state = RunState(self.run_id, flow, dict(run.vars or {}), progress)
            if got.cancel_requested is not None:
                return await self._finish(
                    ctl, RunStatus.CANCELLED, None, f"cancelled: {got.cancel_requested}", None
                )
            beat = asyncio.create_task(
                lease.heartbeat(
                    ctl,
                    self.q,
                    self.run_id,
                    self.engine.owner,
                    s.lease_ttl_s,
                    s.heartbeat_s,
                    self.cancel_event,
                    self.lost_event,
                )
            )
            reporter = asyncio.create_task(self._report_progress()) if self.echo and not self.kind else None
            try:
                return await self._walk_and_finish(ctl)
            except asyncio.CancelledError:
                # Shut down from outside (a worker's SIGTERM): in-flight steps have rolled back;
                # hand the run back so that another runner continues it at once.
                if not ctl.broken:
                    await asyncio.shield(ctl.execute(self.q.release_lease, (self.run_id, self.engine.owner)))
                raise
            finally:
                await cancel_and_wait([beat, *([reporter] if reporter else [])])
        finally:
            if not ctl.broken:
                try:
                    await lease.release(ctl, self.q, s.schema, self.run_id)
                except psycopg.Error:
                    pass

    async def _load_flow(self, ctl: psycopg.AsyncConnection, run: RunRow) -> FlowGraph:
        """The run's own graph version, from its stored plan (or its text, for runs stored
        before plans). The plan is written by the run's own role, so nothing in it is trusted
        across runs: the compile cache is keyed by a hash of the very text that is executed."""
        plan = await (await ctl.execute(self.q.load_plan_text, (self.run_id,))).fetchone()
        plan_text = plan[0] if plan else None
        if text_runs.is_text_run(plan_text, run.graph_hash):  # queued by SQL start(): parse it now
            return await text_runs.load_text_run(ctl, self.settings.schema, self.run_id, run.flow_text)
        with bulk_allocation():
            return load_flow(plan_text, run.flow_text)

    async def _load_progress(self, ctl: psycopg.AsyncConnection, flow: FlowGraph) -> dict[str, NodeProgress]:
        """The run's stored node executions; results only where a replay uses them (all of
        them for a registered kind that says so)."""
        params = {
            "run_id": self.run_id,
            "all_results": bool(self.kind and self.kind.all_results),
            "needed": list(flow.replay_results),
        }
        rows = await (await ctl.execute(self.q.load_progress, params)).fetchall()
        with bulk_allocation():
            return {
                key: NodeProgress(status, result, wake_at, attempts, loaded)
                for key, status, result, wake_at, attempts, loaded in rows
            }

    async def _walk_until_certain(self, ctl: psycopg.AsyncConnection) -> Any:
        """Walk the graph; after an :class:`Uncertain` round trip, reload and walk again."""
        backoff = Backoff(0.05, 2.0, self.settings.reconnect_timeout_s)
        while True:
            try:
                return await self.walker.strand(ROOT, ())
            except Uncertain as exc:
                if exc.solo is not None and exc.solo not in self.solo:
                    self.solo.add(exc.solo)  # re-walk at once: the step will fail on its own
                    backoff.reset()
                elif not await backoff.wait():
                    raise StepFailed(
                        ROOT, f"gave up after {self.settings.reconnect_timeout_s}s: {exc}"
                    ) from None
                log.warning("re-walking run %s from its checkpoints: %s", self.run_id, exc)
                self.state.progress = await self._load_progress(ctl, self.state.flow)
                self.state.bindings.clear()

    async def _report_progress(self, every_s: float = 2.0) -> None:
        """Every few seconds, tell ``echo`` how far the walk is (long runs show progress)."""
        st = self.state
        assert self.echo is not None
        while True:
            await asyncio.sleep(every_s)
            self.echo(f"run {self.run_id[:8]}: {st.executed} node(s) ran, {st.skipped} already done")

    async def _walk_and_finish(self, ctl: psycopg.AsyncConnection) -> Outcome:
        work = self.kind.execute(self) if self.kind else self._walk_until_certain(ctl)
        walk = asyncio.ensure_future(work)
        cancel_wait = asyncio.create_task(self.cancel_event.wait())
        lost_wait = asyncio.create_task(self.lost_event.wait())
        try:
            await asyncio.wait({walk, cancel_wait, lost_wait}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            walk.cancel()
            await asyncio.gather(walk, return_exceptions=True)
            raise
        finally:
            cancel_wait.cancel()
            lost_wait.cancel()
        if not walk.done():
            walk.cancel()
            await asyncio.gather(walk, return_exceptions=True)
        if self.lost_event.is_set():
            if ctl.broken:
                raise Disconnected("lost the connection to Postgres")
            return Outcome(self.run_id, RunStatus.LOST, error="lease lost to another runner")
        if self.cancel_event.is_set() and (not walk.done() or walk.cancelled() or walk.exception()):
            return await self._finish(ctl, RunStatus.CANCELLED, None, "cancelled", None)
        exc = walk.exception()
        if exc is None:
            return await self._finish(ctl, RunStatus.COMPLETED, walk.result(), None, None)
        if isinstance(exc, RunCancelled):
            return await self._finish(ctl, RunStatus.CANCELLED, None, str(exc), None)
        if isinstance(exc, LeaseLost):
            return Outcome(self.run_id, RunStatus.LOST, error=str(exc))
        if isinstance(exc, BreakLoop):  # validation forbids it; kept as a safety net
            return await self._finish(ctl, RunStatus.FAILED, None, "break() outside of a loop", None)
        if isinstance(exc, StepFailed):
            return await self._finish(ctl, RunStatus.FAILED, None, exc.message, exc.exec_key)
        if isinstance(exc, Parked):
            return await self._finish(
                ctl, RunStatus.WAITING, None, exc.reason, None, exc.wake_at, exc.waiting_for
            )
        if isinstance(exc, (Disconnected, ConnectionFailed, psycopg.OperationalError, PoolTimeout)):
            raise exc  # Engine.execute reconnects and resumes in place
        # Anything else is a defect or a hostile input: it fails this run, never the process.
        log.error("run %s failed unexpectedly", self.run_id, exc_info=exc)
        message = f"internal error while executing the run: {type(exc).__name__}: {exc}"
        return await self._finish(ctl, RunStatus.FAILED, None, message[:2000], None)

    async def _finish(
        self,
        ctl: psycopg.AsyncConnection,
        status: RunStatus,
        result: Any,
        error: str | None,
        failed_node: str | None,
        wake_at: datetime | None = None,
        waiting_for: str | None = None,
    ) -> Outcome:
        params = {
            "status": str(status),
            "result": Jsonb(result) if result is not None else None,
            "error": error,
            "failed_node": failed_node,
            "wake_at": wake_at,
            "waiting_for": waiting_for,
            "run_id": self.run_id,
            "owner": self.engine.owner,
        }
        row = await (await ctl.execute(self.q.finish_run, params)).fetchone()
        if not (row and row[0]):
            return Outcome(self.run_id, RunStatus.LOST, error="lease lost to another runner")
        st = self.state
        return Outcome(self.run_id, status, result, error, failed_node, st.skipped, st.executed)
