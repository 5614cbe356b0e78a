"""The operator interpreter: walks a run's graph, node by node, on lanes.

Resuming is deterministic replay: every completed node execution is loaded once, and the
walk returns a completed node's stored result instead of running it again. Branch decisions
depend only on stored results (and a race stores its winner), so a resumed walk takes the
same path as the original up to the first unfinished node.

A strand is a sequential part of the walk with a lane of its own (a connection and a pending
checkpoint); joins and races start one strand per branch.

pg_durable's semantics: a race resolves on the first branch to *finish*, even a failed one (the
run then fails with that branch's error); ``if_rows`` on a name that is not bound, or not a SQL
result, fails the run; ``break()`` may sit in a loop's body or its condition, and outside a loop
fails the run when it executes. SQL-expression arguments (``'SELECT ' || '1'``) are evaluated by
the database once, when the run starts, and stored (node ``@args``), so a resume sees the same
values.

Loops: each loop stops with an error after ``max_iterations`` iterations (option of the loop;
default 100,000, as pg_durable's fixed cap; 0 for no limit). A loop that spins idle is
throttled: an iteration is idle when it ran no wait (sleep, wait_for_signal,
wait_for_schedule), no HTTP step and no SQL step that changed rows (``row_count`` of an
INSERT/UPDATE/DELETE/MERGE), and its body and condition gave the same results as the
iteration before. After 10 idle iterations in a row, the loop waits before each next one:
10 ms, doubling up to 1 s, until an iteration is not idle (a ``loop_throttled`` event records
it). A loop that makes progress, or waits itself, is never slowed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import TYPE_CHECKING, Any

import psycopg

from dbt_durable.errors import DurableError, StepFailed
from dbt_durable.flow import ast as A
from dbt_durable.graph.build import ARGS, DEFAULT_MAX_ITERATIONS, ROOT, FlowGraph
from dbt_durable.runner import faults, results
from dbt_durable.runner.attempts import run_step
from dbt_durable.runner.lane import Lane
from dbt_durable.runner.render import substitute
from dbt_durable.runner.steps import CheckpointWriter
from dbt_durable.runner.values import BreakLoop, NodeProgress, Step, StepSpec, exec_key
from dbt_durable.store.status import NodeStatus

if TYPE_CHECKING:
    from dbt_durable.runner.run import RunExecution


class Walker:
    """Walks one run's graph for one :class:`~dbt_durable.runner.run.RunExecution`."""

    IDLE_AFTER = 10  # idle iterations in a row before a loop is throttled
    THROTTLE_MIN_S = 0.01
    THROTTLE_MAX_S = 1.0

    def __init__(self, run: RunExecution):
        self.run = run
        self._specs: dict[str, StepSpec] = {}
        # Steps with an effect or a wait (HTTP, waits, SQL that changed rows), for idle loops.
        self.activity = 0

    def spec(self, node_id: str, ast: A.Node) -> StepSpec:
        """The step's options, parsed once per run execution."""
        spec = self._specs.get(node_id)
        if spec is None:
            spec = self._specs[node_id] = StepSpec.of(ast)
        return spec

    def new_lane(self) -> Lane:
        run = self.run
        engine = run.engine
        assert engine.pool is not None
        caps = (run.settings.max_result_rows, run.settings.max_result_bytes)
        return Lane(
            engine.pool,
            CheckpointWriter(run.q.checkpoint, run.run_id, engine.owner),
            run.q.node_status,
            engine.types,
            run.q.type_names,
            caps,
            run.run_id,
            run.flow_name,
            run.solo,
        )

    async def strand(self, node_id: str, iters: tuple[int, ...]) -> Any:
        """Run ``node_id`` on a lane of its own; its last checkpoint is committed on success."""
        if node_id == ROOT and not iters:
            await self._start_walk()
        lane = self.new_lane()
        try:
            value = await self.node(node_id, iters, lane)
            await lane.release()
            return value
        finally:
            await lane.discard()

    async def _start_walk(self) -> None:
        """Before the walk: the run's label, and its SQL-expression arguments evaluated."""
        st = self.run.state
        st.label = self.run.flow_name
        if not st.flow.expressions:
            return
        done = st.progress.get(ARGS)
        if done is not None and done.completed:
            values = done.result["values"]
        else:
            values = await self._evaluate(st.flow.expressions)
        st.flow = _with_values(st.flow, values)

    async def _evaluate(self, exprs: tuple[tuple[str, str, str], ...]) -> list[str | None]:
        """Evaluate the expressions in one statement, as the run's own login, and checkpoint
        their values with it (exactly once)."""
        run = self.run
        select = "SELECT " + ", ".join(f"({sql})::text" for _, _, sql in exprs)
        try:
            async with run.writer.connection() as conn:
                async with conn.transaction():
                    row = await (await conn.execute(select.encode())).fetchone()
                    assert row is not None
                    values = list(row)
                    for (node_id, field, sql), value in zip(exprs, values):
                        if value is None and field not in ("body", "headers", "value"):
                            raise StepFailed(ARGS, f"the SQL expression {sql} (node {node_id}) is NULL")
                    await run.writer.checkpoint_on(conn, ARGS, ARGS, "args", 1, {"values": values})
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError):
                raise
            message = str(exc).strip() or type(exc).__name__
            await run.writer.mark(ARGS, ARGS, "args", NodeStatus.FAILED, 1, message, None)
            raise StepFailed(ARGS, f"a SQL expression argument failed: {message}") from None
        return values

    async def node(self, node_id: str, iters: tuple[int, ...], lane: Lane) -> Any:
        st = self.run.state
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
                    if done is not None and done.completed:
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
            if ast.name not in st.bindings:
                raise StepFailed(exec_key(node_id, iters), f"if_rows: result '{ast.name}' is not bound")
            bound = st.bindings[ast.name]
            if not (isinstance(bound, dict) and isinstance(bound.get("row_count"), int)):
                raise StepFailed(
                    exec_key(node_id, iters),
                    f"if_rows: result '{ast.name}' is not a SQL result (no row_count)",
                )
            if bound["row_count"] > 0:
                return await self.node(kids[0], iters, lane)
            return await self.node(kids[1], iters, lane) if len(kids) > 1 else None
        if isinstance(ast, A.Loop):
            return await self._loop(node_id, iters, lane)
        if isinstance(ast, A.Break):
            value = ast.value
            if value is not None:
                value = substitute(st, value, exec_key(node_id, iters), None, raw=True)
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
        st = self.run.state
        if key is None:
            key = exec_key(node_id, iters)
            done = st.progress.get(key)
            if done is not None and done.completed:
                st.skipped += 1
                return done.result
        st.executed += 1
        faults.hit("before_step", key, self.run.flow_name)
        if not self.spec(node_id, ast).transactional:
            await lane.release()
        value = await run_step(self.run, Step(node_id, iters, key, ast, self.spec(node_id, ast)), lane)
        if not isinstance(ast, A.Sql) or (
            isinstance(value, dict) and not value.get("rows") and value.get("row_count")
        ):
            self.activity += 1
        if lane.pending_key is None:  # lane steps report after_commit when their checkpoint commits
            faults.hit("after_commit", key, self.run.flow_name)
        return value

    async def _join(self, node_id: str, iters: tuple[int, ...]) -> list[Any]:
        st = self.run.state
        tasks = [asyncio.create_task(self.strand(kid, iters)) for kid in st.flow.children(node_id)]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _race(self, node_id: str, iters: tuple[int, ...]) -> Any:
        st = self.run.state
        key = exec_key(node_id, iters)
        kids = st.flow.children(node_id)
        done = st.progress.get(key)
        if done is not None and done.completed:
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
                # pg_durable: the first branch to finish decides, even a failed one.
                for task in sorted(finished, key=tasks.__getitem__):
                    exc = task.exception()
                    if exc is None:
                        value = task.result()
                        await self.run.writer.checkpoint(
                            key, node_id, "race", 1, {"winner": tasks[task], "value": value}
                        )
                        return value
                    first_error = first_error or exc
                assert first_error is not None
                raise first_error
            raise DurableError("internal error: a race without branches")
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _loop(self, node_id: str, iters: tuple[int, ...], lane: Lane) -> Any:
        st = self.run.state
        kids = st.flow.children(node_id)
        ast = st.flow.node(node_id)
        limit = int(ast.option("max_iterations", DEFAULT_MAX_ITERATIONS) or 0)
        idle, delay, previous = 0, 0.0, None
        i = 0
        while True:
            if limit and i >= limit:
                raise StepFailed(
                    exec_key(node_id, iters),
                    f"loop exceeded max_iterations={limit}: its exit condition never held and no "
                    "break() ran; raise the limit with (@> body) with (max_iterations=N) or "
                    "loop(body, cond) with (max_iterations=N) (0: no limit), or fix the condition",
                )
            inner = iters + (i,)
            activity, executed = self.activity, st.executed
            try:
                value = await self.node(kids[0], inner, lane)
                cond = await self.node(kids[1], inner, lane) if len(kids) > 1 else None
            except BreakLoop as brk:  # in the body or in the condition
                return brk.value
            if len(kids) > 1 and not results.truthy(cond):
                return value
            # Idle: nothing ran that waits or changes anything, and the same results (and the
            # same bound names: an INSERT ... RETURNING that binds its row changes them) again.
            outcome = (value, cond, dict(st.bindings))
            if self.activity == activity and st.executed > executed and outcome == previous:
                idle += 1
            else:
                idle, delay = 0, 0.0
            previous = outcome
            if idle >= self.IDLE_AFTER:
                if delay == 0.0:
                    await lane.release()
                    await self.run.writer.event(
                        exec_key(node_id, iters), "loop_throttled", {"iteration": i, "idle": idle}
                    )
                delay = min(self.THROTTLE_MAX_S, max(self.THROTTLE_MIN_S, delay * 2))
                await lane.release()  # never hold a connection or a pending checkpoint while waiting
                await asyncio.sleep(delay)
            i += 1


def _with_values(flow: FlowGraph, values: list[str | None]) -> FlowGraph:
    """``flow`` with its SQL-expression arguments replaced by their evaluated values (the same
    nodes and ids; a new graph for this run only, the cached one is never changed)."""
    by_node: dict[str, dict[str, str | None]] = {}
    for (node_id, field, _), value in zip(flow.expressions, values):
        by_node.setdefault(node_id, {})[field] = value

    def rebuild(node_id: str, node: A.Node) -> A.Node:
        kids = flow.children(node_id)
        fields: dict[str, Any] = dict(by_node.get(node_id, {}))
        if kids:
            new_kids = [rebuild(k, flow.node(k)) for k in kids]
            if isinstance(node, (A.Seq, A.Join, A.Race)):
                fields["items"] = tuple(new_kids)
            elif isinstance(node, A.Bind):
                fields["body"] = new_kids[0]
            elif isinstance(node, A.If):
                fields.update(
                    cond=new_kids[0], then=new_kids[1], orelse=new_kids[2] if len(new_kids) > 2 else None
                )
            elif isinstance(node, A.IfRows):
                fields.update(then=new_kids[0], orelse=new_kids[1] if len(new_kids) > 1 else None)
            elif isinstance(node, A.Loop):
                fields.update(body=new_kids[0], cond=new_kids[1] if len(new_kids) > 1 else None)
        return dataclasses.replace(node, **fields) if fields else node

    return FlowGraph.of(rebuild(ROOT, flow.ast), flow.text, flow.graph_hash)
