"""The resumable runner: walks a run's graph and checkpoints every node in Postgres.

Resuming is deterministic replay: every completed node execution is loaded once, and the
walk returns a completed node's stored result instead of running it again. Branch decisions
depend only on stored results (and a race stores its winner), so a resumed walk takes the
same path as the original up to the first unfinished node.

Execution keys: a node's id, plus ``#i.j`` for the loop iterations it runs in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from dbt_durable.bulk import bulk_allocation
from dbt_durable.config import Settings
from dbt_durable.errors import (
    BindingError,
    ConnectionFailed,
    DurableError,
    LeaseLost,
    ResultTooLarge,
    RunCancelled,
    StepFailed,
)
from dbt_durable.flow import ast as A
from dbt_durable.flow.parser import parse_duration
from dbt_durable.flow.refs import VAR
from dbt_durable.graph.build import ROOT, FlowGraph, compile_flow, load_flow
from dbt_durable.runner import faults, lease, results, steps
from dbt_durable.runner.http import EgressDenied, RequestInvalid, SecretValues, render_request_text
from dbt_durable.runner.lane import Lane, Uncertain
from dbt_durable.runner.steps import CheckpointWriter
from dbt_durable.store.connect import APP_PREFIX, connect_kwargs, open_async
from dbt_durable.store.queries import Queries
from dbt_durable.store.runs import RunRow

log = logging.getLogger("dbt_durable.runner")

MAX_BACKOFF_S = 300.0


class Parked(Exception):
    """A wait is longer than ``park_after_s``: the run parks as ``waiting`` until ``wake_at``
    (or until signal ``waiting_for`` arrives)."""

    def __init__(self, wake_at: datetime | None, reason: str, waiting_for: str | None = None):
        super().__init__(reason)
        self.wake_at = wake_at
        self.reason = reason
        self.waiting_for = waiting_for


class Disconnected(DurableError):
    """The control connection broke; the runner reconnects and resumes in place."""


class BreakLoop(Exception):
    """Raised by ``break()``; caught by the nearest enclosing loop."""

    def __init__(self, value: Any):
        super().__init__("break")
        self.value = value


@dataclass
class Outcome:
    """How a run ended in this runner: completed, failed, cancelled or waiting."""

    run_id: str
    status: str
    result: Any = None
    error: str | None = None
    failed_node: str | None = None
    skipped: int = 0
    executed: int = 0


@dataclass
class NodeProgress:
    """A stored node execution. The result is kept as JSON text and parsed on first use:
    a resume reads every row, but the walk needs few of the results. ``loaded`` is False for
    a result that was not read (a step that a replay skips: see ``FlowGraph.replay_results``)."""

    status: str
    result_text: str | None
    wake_at: datetime | None
    attempts: int
    loaded: bool = True

    @property
    def result(self) -> Any:
        if not self.loaded:
            raise DurableError("internal error: a replay used a result that it did not load")
        if self.result_text is None:
            return None
        if not hasattr(self, "_parsed"):
            self._parsed = json.loads(self.result_text)
        return self._parsed


@dataclass
class RunState:
    """Everything one run's walk needs; owned by one :class:`RunExecution`."""

    run_id: str
    flow: FlowGraph
    vars: dict[str, str]
    progress: dict[str, NodeProgress]
    bindings: dict[str, Any] = field(default_factory=dict)
    skipped: int = 0
    executed: int = 0


@dataclass(frozen=True)
class StepSpec:
    """A step's options, parsed once per run execution rather than once per attempt."""

    retries: int
    backoff_s: float
    timeout_s: float | None
    transactional: bool  # a SQL step that runs in the lane's transaction (exactly once)
    templated: bool  # its text may hold {var}s or $name references, so it is rendered

    @classmethod
    def of(cls, ast: A.Node) -> StepSpec:
        if type(ast) is A.Sql and not ast.options:  # the common case
            return _TEMPLATED_SQL if "{" in ast.text or "$" in ast.text else _PLAIN_SQL
        # HTTP steps retry 5xx and transport errors twice unless told otherwise.
        retries = int(ast.option("retries", 2 if isinstance(ast, A.Http) else 0) or 0)
        timeout = ast.option("timeout")
        text = ast.text if isinstance(ast, A.Sql) else ""
        return cls(
            retries=retries,
            backoff_s=parse_duration(ast.option("backoff", 1.0) or 1.0),
            timeout_s=parse_duration(timeout) if timeout is not None else None,
            transactional=isinstance(ast, A.Sql) and bool(ast.option("transaction", True)),
            templated="{" in text or "$" in text,
        )


_PLAIN_SQL = StepSpec(retries=0, backoff_s=1.0, timeout_s=None, transactional=True, templated=False)
_TEMPLATED_SQL = StepSpec(retries=0, backoff_s=1.0, timeout_s=None, transactional=True, templated=True)


def exec_key(node_id: str, iters: tuple[int, ...]) -> str:
    return node_id if not iters else f"{node_id}#{'.'.join(map(str, iters))}"


class Engine:
    """Owns the connection pool, the control connection and the owner id of one process.

    One Engine can execute many runs, one after the other or at the same time.
    """

    def __init__(
        self, settings: Settings, clock: Callable[[], datetime] | None = None, owner: str | None = None
    ):
        self.settings = settings
        self.q = Queries(settings.schema)
        # ``owner``: given when the caller created a run already claimed for this engine.
        self.owner = owner or new_owner_id()
        self.clock = clock or (lambda: datetime.now(UTC))
        self.types = steps.TypeNames()
        self.pool: AsyncConnectionPool | None = None
        self.ctl_pool: AsyncConnectionPool | None = None

    async def __aenter__(self) -> Engine:
        app = APP_PREFIX + self.owner
        # Every connection logs in as the settings' login: a run's SQL executes as that login,
        # so a step that runs RESET ROLE is still that login (docs/SECURITY.md). Connections go
        # back to a pool clean (DISCARD ALL): no search_path, setting, prepared statement,
        # temporary table or advisory lock of one run survives into another.
        self.pool = AsyncConnectionPool(
            self.settings.dsn,
            min_size=1,
            max_size=self.settings.concurrency,
            kwargs=connect_kwargs(self.settings.dsn, app),
            open=False,
            # No check on checkout (it costs a round trip per strand): a connection that died
            # with a server restart fails its step as transient, and the step is retried.
            reset=discard_session,
            timeout=self.settings.pool_timeout_s,
        )
        # Control connections hold each run's advisory lock (its liveness) for the run's whole
        # life; pooling them spares a connection setup per run in workers.
        self.ctl_pool = AsyncConnectionPool(
            self.settings.dsn,
            min_size=1,
            max_size=max(4, self.settings.concurrency),
            kwargs=connect_kwargs(self.settings.dsn, app + ":ctl"),
            open=False,
            check=AsyncConnectionPool.check_connection,
            reset=discard_session,
            timeout=self.settings.pool_timeout_s,
        )
        # The pools connect in the background while the probe fails fast, with a clear
        # message, if the database cannot be reached.
        await self.pool.open(wait=False)
        await self.ctl_pool.open(wait=False)
        try:
            probe = await open_async(self.settings.dsn, app)
            await probe.close()
            await self.pool.wait()
            await self.ctl_pool.wait()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        for pool in (self.pool, self.ctl_pool):
            if pool is not None:
                await pool.close()

    async def execute(
        self, run_id: str, retry_failed: bool = False, echo: Callable[[str], None] | None = None
    ) -> Outcome:
        """Run (or resume) ``run_id`` until it completes, fails, is cancelled or parks.

        ``echo`` receives progress lines (dbt builds print each finished node).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.reconnect_timeout_s
        delay = 0.1
        while True:
            execution = RunExecution(self, run_id)
            execution.echo = echo
            try:
                return await execution.run(retry_failed)
            except PoolTimeout:
                raise
            except (Disconnected, ConnectionFailed, psycopg.OperationalError) as exc:
                # The server went away (restart, failover, network): reconnect with backoff and
                # resume in place. Whatever committed is kept; the rest runs again.
                if loop.time() > deadline:
                    raise ConnectionFailed(
                        f"gave up reconnecting after {self.settings.reconnect_timeout_s:.0f}s: {exc}"
                    ) from None
                log.warning("run %s: %s; reconnecting in %.1fs", run_id, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                retry_failed = True


class RunExecution:
    """One runner's hold on one run: claim, walk, finish."""

    echo: Callable[[str], None] | None = None

    def __init__(self, engine: Engine, run_id: str):
        self.engine = engine
        self.settings = engine.settings
        self.q = engine.q
        self.run_id = run_id
        self.cancel_event = asyncio.Event()
        self.lost_event = asyncio.Event()
        self.state: RunState | None = None
        self.flow_name = ""
        self.build_target: dict[str, Any] | None = None
        self.solo: set[str] = set()  # steps whose checkpoint-before is committed separately
        self._specs: dict[str, StepSpec] = {}

    # -- lifecycle -------------------------------------------------------------------------
    async def run(self, retry_failed: bool) -> Outcome:
        assert self.engine.ctl_pool is not None
        async with self.engine.ctl_pool.connection() as ctl:
            return await self._run_with(ctl, retry_failed)

    async def _run_with(self, ctl: psycopg.AsyncConnection, retry_failed: bool) -> Outcome:
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
            )
            run = got.run
            if not got.taken:
                return Outcome(self.run_id, run.status, run.result, run.error, run.failed_node)
            is_build = run.kind == "dbt_build"
            flow = compile_flow("'SELECT 1'", validated=True) if is_build else await self._load_flow(ctl, run)
            self.build_target = dict(run.dbt_args or {}) if is_build else None
            progress = await self._load_progress(ctl, flow)
            self.flow_name = run.flow_name
            self.state = RunState(self.run_id, flow, dict(run.vars or {}), progress)
            if got.cancel_requested is not None:
                return await self._finish(ctl, "cancelled", None, f"cancelled: {got.cancel_requested}", None)
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
            reporter = asyncio.create_task(self._report_progress()) if self.echo else None
            try:
                return await self._walk_and_finish(ctl)
            except asyncio.CancelledError:
                # Shut down from outside (a worker's SIGTERM): in-flight steps have rolled back;
                # hand the run back so that another runner continues it at once.
                if not ctl.broken:
                    await asyncio.shield(ctl.execute(self.q.release_lease, (self.run_id, self.engine.owner)))
                raise
            finally:
                beat.cancel()
                if reporter is not None:
                    reporter.cancel()
                await asyncio.gather(beat, *([reporter] if reporter else []), return_exceptions=True)
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
        with bulk_allocation():
            return load_flow(plan[0] if plan else None, run.flow_text)

    async def _load_progress(self, ctl: psycopg.AsyncConnection, flow: FlowGraph) -> dict[str, NodeProgress]:
        """The run's stored node executions; results only where a replay uses them (a durable
        build's are all needed: they name the nodes that are done)."""
        params = {
            "run_id": self.run_id,
            "all_results": self.build_target is not None,
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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.reconnect_timeout_s
        delay = 0.05
        while True:
            try:
                return await self.strand(ROOT, ())
            except Uncertain as exc:
                if exc.solo is not None and exc.solo not in self.solo:
                    self.solo.add(exc.solo)  # re-walk at once: the step will fail on its own
                    delay = 0.0
                if loop.time() > deadline:
                    raise StepFailed(
                        ROOT, f"gave up after {self.settings.reconnect_timeout_s}s: {exc}"
                    ) from None
                log.warning("re-walking run %s from its checkpoints: %s", self.run_id, exc)
                await asyncio.sleep(delay)
                delay = min(max(delay * 2, 0.05), 2.0)
                st = self.state
                assert st is not None
                st.progress = await self._load_progress(ctl, st.flow)
                st.bindings.clear()

    async def _report_progress(self, every_s: float = 2.0) -> None:
        """Every few seconds, tell ``echo`` how far the walk is (long runs show progress)."""
        st = self.state
        assert st is not None and self.echo is not None
        while True:
            await asyncio.sleep(every_s)
            if self.build_target is None:
                self.echo(f"run {self.run_id[:8]}: {st.executed} node(s) ran, {st.skipped} already done")

    async def _build(self) -> Any:
        """A durable dbt build: checkpoint every node dbt finishes; fail if dbt fails."""
        from dbt_durable.bridge.build import check_target, run_build

        st = self.state
        assert st is not None and self.build_target is not None
        try:
            check_target(self.build_target, self.settings.dbt_projects)
        except DurableError as exc:
            raise StepFailed(ROOT, str(exc)) from None
        done = [p.result["name"] for p in st.progress.values() if p.status == "completed" and p.result]
        st.skipped = len(done)

        async def on_node(info: dict[str, Any]) -> None:
            uid = str(info.get("unique_id"))
            result = {
                "name": info.get("node_name"),
                "status": info.get("node_status"),
                "resource_type": info.get("resource_type"),
            }
            await self._checkpoint(uid, uid, "dbt", 1, result)
            st.executed += 1
            faults.hit("after_commit", uid, self.flow_name)

        code, errors = await run_build(self.build_target, done, on_node, self.cancel_event, self.echo)
        if self.cancel_event.is_set():
            raise RunCancelled("cancelled")
        if code != 0:
            detail = "; ".join(f"{uid}: {msg}" if uid else msg for uid, msg in errors)
            failed = next((uid for uid, _ in errors if uid), ROOT)
            raise StepFailed(failed, detail or f"dbt build exited with code {code}")
        return {"nodes_built": st.executed, "nodes_skipped": st.skipped}

    async def _walk_and_finish(self, ctl: psycopg.AsyncConnection) -> Outcome:
        work = self._build() if self.build_target is not None else self._walk_until_certain(ctl)
        walk = asyncio.create_task(work)
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
            return Outcome(self.run_id, "lost", error="lease lost to another runner")
        if self.cancel_event.is_set() and (not walk.done() or walk.cancelled() or walk.exception()):
            return await self._finish(ctl, "cancelled", None, "cancelled", None)
        exc = walk.exception()
        if exc is None:
            return await self._finish(ctl, "completed", walk.result(), None, None)
        if isinstance(exc, RunCancelled):
            return await self._finish(ctl, "cancelled", None, str(exc), None)
        if isinstance(exc, LeaseLost):
            return Outcome(self.run_id, "lost", error=str(exc))
        if isinstance(exc, BreakLoop):  # validation forbids it; kept as a safety net
            return await self._finish(ctl, "failed", None, "break() outside of a loop", None)
        if isinstance(exc, StepFailed):
            return await self._finish(ctl, "failed", None, exc.message, exc.exec_key)
        if isinstance(exc, Parked):
            return await self._finish(ctl, "waiting", None, exc.reason, None, exc.wake_at, exc.waiting_for)
        if isinstance(exc, (Disconnected, ConnectionFailed, psycopg.OperationalError, PoolTimeout)):
            raise exc  # Engine.execute reconnects and resumes in place
        # Anything else is a defect or a hostile input: it fails this run, never the process.
        log.error("run %s failed unexpectedly", self.run_id, exc_info=exc)
        message = f"internal error while executing the run: {type(exc).__name__}: {exc}"
        return await self._finish(ctl, "failed", None, message[:2000], None)

    async def _finish(
        self,
        ctl: psycopg.AsyncConnection,
        status: str,
        result: Any,
        error: str | None,
        failed_node: str | None,
        wake_at: datetime | None = None,
        waiting_for: str | None = None,
    ) -> Outcome:
        params = {
            "status": status,
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
            return Outcome(self.run_id, "lost", error="lease lost to another runner")
        st = self.state
        return Outcome(
            self.run_id, status, result, error, failed_node, st.skipped if st else 0, st.executed if st else 0
        )

    # -- the walk --------------------------------------------------------------------------
    def new_lane(self) -> Lane:
        assert self.engine.pool is not None
        caps = (self.settings.max_result_rows, self.settings.max_result_bytes)
        return Lane(
            self.engine.pool,
            CheckpointWriter(self.q.checkpoint, self.run_id, self.engine.owner),
            self.q.node_status,
            self.engine.types,
            self.q.type_names,
            caps,
            self.run_id,
            self.flow_name,
            self.solo,
        )

    async def strand(self, node_id: str, iters: tuple[int, ...]) -> Any:
        """Run ``node_id`` on a lane of its own; its last checkpoint is committed on success."""
        lane = self.new_lane()
        try:
            value = await self.node(node_id, iters, lane)
            await lane.release()
            return value
        finally:
            await lane.discard()

    async def node(self, node_id: str, iters: tuple[int, ...], lane: Lane) -> Any:
        st = self.state
        assert st is not None
        ast = st.flow.node(node_id)
        if node_id in st.flow.step_ids:
            return await self._leaf(node_id, iters, ast, lane)
        if isinstance(ast, A.Seq):
            result: Any = None
            replayed: NodeProgress | None = None
            steps, progress = st.flow.step_ids, st.progress
            for kid in st.flow.children(node_id):
                if kid in steps:  # fast path of a resume: a finished step is a dict lookup
                    key = exec_key(kid, iters)
                    done = progress.get(key)
                    if done is not None and done.status == "completed":
                        st.skipped += 1
                        replayed = done
                        continue
                    replayed = None
                    result = await self._leaf(kid, iters, st.flow.node(kid), lane, key)
                    continue
                replayed = None
                result = await self.node(kid, iters, lane)
            return replayed.result if replayed is not None else result
        if isinstance(ast, A.Bind):
            value = await self.node(st.flow.children(node_id)[0], iters, lane)
            st.bindings[ast.name] = value
            return value
        if isinstance(ast, A.Join):
            await lane.release()
            return await self._join(node_id, iters)
        if isinstance(ast, A.Race):
            await lane.release()
            return await self._race(node_id, iters)
        if isinstance(ast, A.If):
            kids = st.flow.children(node_id)
            if results.truthy(await self.node(kids[0], iters, lane)):
                return await self.node(kids[1], iters, lane)
            return await self.node(kids[2], iters, lane) if len(kids) > 2 else None
        if isinstance(ast, A.IfRows):
            kids = st.flow.children(node_id)
            bound = st.bindings.get(ast.name)
            has_rows = bool(bound.get("rows")) if isinstance(bound, dict) and "rows" in bound else bool(bound)
            if has_rows:
                return await self.node(kids[0], iters, lane)
            return await self.node(kids[1], iters, lane) if len(kids) > 1 else None
        if isinstance(ast, A.Loop):
            return await self._loop(node_id, iters, lane)
        if isinstance(ast, A.Break):
            value = ast.value
            if value is not None:
                value = self._substitute(value, node_id, iters, attempt=1, conn=None, raw=True)
                try:
                    value = json.loads(value)
                except ValueError:
                    pass
            raise BreakLoop(value)
        raise DurableError(f"cannot execute node kind {A.kind_of(ast)}")

    async def _leaf(
        self, node_id: str, iters: tuple[int, ...], ast: A.Node, lane: Lane, key: str | None = None
    ) -> Any:
        """A step: its stored result if it completed before, else run it (and checkpoint it).

        ``key``: the execution key, when the caller has already found no completed execution.
        """
        st = self.state
        assert st is not None
        if key is None:
            key = exec_key(node_id, iters)
            done = st.progress.get(key)
            if done is not None and done.status == "completed":
                st.skipped += 1
                return done.result
        st.executed += 1
        faults.hit("before_step", key, self.flow_name)
        if not self._spec(node_id, ast).transactional:
            await lane.release()
        value = await self._step(node_id, iters, key, ast, lane)
        if lane.pending_key is None:  # lane steps report after_commit when their checkpoint commits
            faults.hit("after_commit", key, self.flow_name)
        return value

    async def _join(self, node_id: str, iters: tuple[int, ...]) -> list[Any]:
        st = self.state
        assert st is not None
        tasks = [asyncio.create_task(self.strand(kid, iters)) for kid in st.flow.children(node_id)]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _race(self, node_id: str, iters: tuple[int, ...]) -> Any:
        st = self.state
        assert st is not None
        key = exec_key(node_id, iters)
        kids = st.flow.children(node_id)
        done = st.progress.get(key)
        if done is not None and done.status == "completed":
            # Replay only the winner, so its bindings are restored; its nodes are all done.
            await self.strand(kids[done.result["winner"]], iters)
            st.skipped += 1
            return done.result["value"]
        tasks = {asyncio.create_task(self.strand(kid, iters)): i for i, kid in enumerate(kids)}
        pending = set(tasks)
        first_error: BaseException | None = None
        try:
            while pending:
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    exc = task.exception()
                    if exc is None:
                        value = task.result()
                        await self._checkpoint(
                            key, node_id, "race", 1, {"winner": tasks[task], "value": value}
                        )
                        return value
                    if not isinstance(exc, StepFailed):
                        raise exc
                    first_error = first_error or exc
            assert first_error is not None
            raise first_error
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _loop(self, node_id: str, iters: tuple[int, ...], lane: Lane) -> Any:
        st = self.state
        assert st is not None
        kids = st.flow.children(node_id)
        i = 0
        while True:
            inner = iters + (i,)
            try:
                value = await self.node(kids[0], inner, lane)
            except BreakLoop as brk:
                return brk.value
            if len(kids) > 1 and not results.truthy(await self.node(kids[1], inner, lane)):
                return value
            i += 1

    # -- steps -----------------------------------------------------------------------------
    async def _step(self, node_id: str, iters: tuple[int, ...], key: str, ast: A.Node, lane: Lane) -> Any:
        spec = self._spec(node_id, ast)
        retries, backoff, timeout_s = spec.retries, spec.backoff_s, spec.timeout_s
        assert self.state is not None
        earlier = self.state.progress.get(key)  # a failed or parked execution resumes its count
        attempt = earlier.attempts if earlier is not None else 0
        failures = 0
        reconnect_deadline: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            attempt += 1
            try:
                return await self._attempt(node_id, iters, key, ast, attempt, timeout_s, lane)
            except (LeaseLost, RunCancelled, Uncertain, asyncio.CancelledError):
                raise
            except steps.StepSqlError as exc:
                if exc.transient:
                    await lane.discard()
                    # The connection broke (restart, terminated backend): retry without
                    # spending an attempt, for up to reconnect_timeout_s.
                    now = loop.time()
                    reconnect_deadline = reconnect_deadline or now + self.settings.reconnect_timeout_s
                    if now < reconnect_deadline:
                        attempt -= 1
                        await asyncio.sleep(min(2.0, 0.1 * 2 ** min(failures, 5)))
                        failures += 1
                        continue
                error: Exception = exc
            except (ResultTooLarge, BindingError, EgressDenied, RequestInvalid) as exc:
                await lane.release()
                await self._fail(key, node_id, ast, attempt, str(exc))
                raise StepFailed(key, str(exc)) from None
            except (PoolTimeout, psycopg.Error, DurableError, OSError, TimeoutError) as exc:
                error = exc
            except (Parked, BreakLoop):
                raise
            except Exception as exc:  # e.g. a value that cannot be encoded: retrying cannot help
                message = f"{type(exc).__name__}: {exc}"[:2000]
                await lane.release()
                await self._fail(key, node_id, ast, attempt, message)
                raise StepFailed(key, message) from None
            message = str(error) or type(error).__name__
            if isinstance(error, PoolTimeout):
                message = f"no database connection free within {self.settings.pool_timeout_s}s: {message}"
            # Give the strand's connection back first: with a full pool, writing the failure
            # or the retry event would otherwise wait on the connection this strand holds.
            await lane.release()
            if attempt > retries:
                await self._fail(key, node_id, ast, attempt, message)
                raise StepFailed(key, message) from None
            await self._event(key, "node_retry", {"attempt": attempt, "error": message})
            delay = min(MAX_BACKOFF_S, backoff * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
            await asyncio.sleep(delay)

    def _spec(self, node_id: str, ast: A.Node) -> StepSpec:
        spec = self._specs.get(node_id)
        if spec is None:
            spec = self._specs[node_id] = StepSpec.of(ast)
        return spec

    async def _attempt(
        self,
        node_id: str,
        iters: tuple[int, ...],
        key: str,
        ast: A.Node,
        attempt: int,
        timeout_s: float | None,
        lane: Lane,
    ) -> Any:
        if isinstance(ast, A.Sql):
            return await self._sql(node_id, iters, key, ast, attempt, timeout_s, lane)
        if isinstance(ast, A.Sleep):
            return await self._timer(node_id, key, ast, lambda now: now + timedelta(seconds=ast.seconds))
        if isinstance(ast, A.WaitSchedule):
            return await self._timer(node_id, key, ast, lambda now: _next_slot(ast, now))
        if isinstance(ast, A.WaitSignal):
            return await self._wait_signal(node_id, key, ast)
        if isinstance(ast, A.Http):
            from dbt_durable.runner.http import run_http

            secrets = SecretValues()

            def substitute(piece: str) -> str:
                return self._substitute(piece, node_id, iters, attempt, None, raw=True)

            # {env:NAME} is expanded in the flow's own text only, never in substituted values.
            text = {
                f: render_request_text(getattr(ast, f), substitute, secrets) if getattr(ast, f) else None
                for f in ("url", "body", "headers")
            }
            idem = self._idempotency_key(key, attempt)
            try:
                result = await run_http(
                    ast,
                    text["url"] or ast.url,
                    text["body"],
                    text["headers"],
                    idem,
                    self.settings.max_result_bytes,
                    timeout_s,
                )
            except DurableError as exc:
                raise type(exc)(secrets.mask(str(exc))) from None
            stored = secrets.mask_json(result)  # bound and stored alike, so a replay sees the same
            await self._checkpoint(key, node_id, "http", attempt, stored)
            return stored
        raise DurableError(f"cannot execute node kind {A.kind_of(ast)}")

    async def _sql(
        self,
        node_id: str,
        iters: tuple[int, ...],
        key: str,
        ast: A.Sql,
        attempt: int,
        timeout_s: float | None,
        lane: Lane,
    ) -> Any:
        conn = await lane.connection()
        spec = self._spec(node_id, ast)
        text = self._substitute(ast.text, node_id, iters, attempt, conn) if spec.templated else ast.text
        if spec.transactional:
            return await lane.run(text, timeout_s, key, node_id, attempt, self.engine.clock())
        caps = (self.settings.max_result_rows, self.settings.max_result_bytes)
        result = await steps.run_autocommit(conn, text, timeout_s, self.engine.types, self.q.type_names, caps)
        await lane.release()
        await self._checkpoint(key, node_id, "sql", attempt, result)
        return result

    async def _timer(self, node_id: str, key: str, ast: A.Node, wake: Callable[[datetime], datetime]) -> Any:
        st = self.state
        assert st is not None
        parked = st.progress.get(key)
        wake_at = parked.wake_at if parked is not None and parked.wake_at else None
        if wake_at is None:
            wake_at = wake(self.engine.clock())
            await self._mark(key, node_id, A.kind_of(ast), "waiting", 1, None, wake_at)
            st.progress[key] = NodeProgress("waiting", None, wake_at, 1)
        delay = (wake_at - self.engine.clock()).total_seconds()
        park = self.settings.park_after_s
        if park is not None and delay > park:
            raise Parked(wake_at, f"{A.kind_of(ast)} at node {key} until {wake_at.isoformat()}")
        if delay > 0:
            await asyncio.sleep(delay)
        result = {"woke_at": wake_at.isoformat()}
        await self._checkpoint(key, node_id, A.kind_of(ast), 1, result)
        return result

    async def _wait_signal(self, node_id: str, key: str, ast: A.WaitSignal) -> Any:
        st = self.state
        assert st is not None and self.engine.pool is not None
        parked = st.progress.get(key)
        deadline = parked.wake_at if parked is not None else None
        if deadline is None and ast.timeout_s is not None:
            deadline = self.engine.clock() + timedelta(seconds=ast.timeout_s)
        if parked is None:
            await self._mark(key, node_id, "wait_for_signal", "waiting", 1, None, deadline)
            st.progress[key] = NodeProgress("waiting", None, deadline, 1)
        poll = 0.05
        started = self.engine.clock()
        while True:
            async with self._state_connection() as conn:
                async with conn.transaction():
                    cur = await conn.execute(
                        self.q.consume_signal,
                        {
                            "exec_key": key,
                            "run_id": self.run_id,
                            "name": ast.name,
                            "owner": self.engine.owner,
                        },
                    )
                    row = await cur.fetchone()
                    if row is not None:
                        result = {
                            "signal_name": ast.name,
                            "payload": row[0],
                            "timed_out": False,
                            "sent_at": row[1].isoformat(),
                        }
                        await self._checkpoint_on(conn, key, node_id, "wait_for_signal", 1, result)
                        return result
            park = self.settings.park_after_s
            if park is not None and (self.engine.clock() - started).total_seconds() >= park:
                raise Parked(deadline, f"wait_for_signal('{ast.name}') at node {key}", ast.name)
            if deadline is not None and self.engine.clock() >= deadline:
                result = {"signal_name": ast.name, "payload": None, "timed_out": True}
                await self._checkpoint(key, node_id, "wait_for_signal", 1, result)
                return result
            await asyncio.sleep(poll)
            poll = min(poll * 2, 1.0)

    # -- state writes ----------------------------------------------------------------------
    async def _checkpoint(self, key: str, node_id: str, kind: str, attempt: int, result: Any) -> None:
        assert self.engine.pool is not None
        async with self._state_connection() as conn:
            await self._checkpoint_on(conn, key, node_id, kind, attempt, result)

    async def _checkpoint_on(
        self, conn: psycopg.AsyncConnection, key: str, node_id: str, kind: str, attempt: int, result: Any
    ) -> None:
        args = (
            self.run_id,
            self.engine.owner,
            key,
            node_id,
            kind,
            attempt,
            Jsonb(result),
            self.engine.clock(),
        )
        await self._fenced(conn.execute(self.q.checkpoint, args))

    async def _mark(
        self,
        key: str,
        node_id: str,
        kind: str,
        status: str,
        attempt: int,
        error: str | None,
        wake_at: datetime | None,
    ) -> None:
        assert self.engine.pool is not None
        args = (self.run_id, self.engine.owner, key, node_id, kind, status, attempt, error, wake_at)
        async with self._state_connection() as conn:
            await self._fenced(conn.execute(self.q.mark_node, args))

    async def _fail(self, key: str, node_id: str, ast: A.Node, attempt: int, message: str) -> None:
        await self._mark(key, node_id, A.kind_of(ast), "failed", attempt, message, None)

    async def _event(self, key: str, kind: str, detail: dict[str, Any]) -> None:
        assert self.engine.pool is not None
        async with self._state_connection() as conn:
            await conn.execute(self.q.record_event, (self.run_id, kind, Jsonb({"exec_key": key, **detail})))

    def _state_connection(self) -> Any:
        """A pooled connection for state writes. These wait longer than steps do: a failure
        must still be recorded when branches hold every connection (strands release theirs
        before writing, so the wait always ends)."""
        assert self.engine.pool is not None
        return self.engine.pool.connection(timeout=max(self.settings.pool_timeout_s, 300.0))

    async def _fenced(self, statement: Awaitable[Any]) -> Any:
        try:
            return await statement
        except psycopg.Error as exc:
            err = steps.fence_error(exc)
            if err is not None:
                raise err from None
            raise

    # -- text ------------------------------------------------------------------------------
    def _idempotency_key(self, key: str, attempt: int) -> str:
        # Stable across retries and resumes, so a receiver can deduplicate every attempt.
        return f"{self.run_id}:{key}"

    def _substitute(
        self, text: str, node_id: str, iters: tuple[int, ...], attempt: int, conn: Any, raw: bool = False
    ) -> str:
        st = self.state
        assert st is not None
        key = exec_key(node_id, iters)
        system = {
            "sys_run_id": self.run_id,
            "sys_node": key,
            "sys_idempotency_key": self._idempotency_key(key, attempt),
        }

        def var(m: Any) -> str:
            name = m["name"]
            if name in system:
                return system[name]
            return st.vars.get(name, m.group())

        text = VAR.sub(var, text)
        if raw:
            return results.render_raw(text, st.bindings)
        return results.render(text, st.bindings, conn)


def _next_slot(ast: A.WaitSchedule, now: datetime) -> datetime:
    import zoneinfo

    from croniter import croniter

    tz = zoneinfo.ZoneInfo(ast.tz or "UTC")
    nxt: datetime = croniter(ast.cron, now.astimezone(tz)).get_next(datetime)
    return nxt.astimezone(UTC)


async def cancel_and_wait(tasks: set[asyncio.Task[Any]] | list[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended (their errors are dropped)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def new_owner_id() -> str:
    """A runner's owner id: 16 hex digits (the lease code relies on the shape)."""
    return secrets.token_hex(8)


async def discard_session(conn: psycopg.AsyncConnection) -> None:
    """Pool reset: the next run gets a session with nothing of this one's (settings,
    search_path, advisory locks, prepared statements, temporary tables, LISTENs)."""
    await conn.execute(b"DISCARD ALL")
