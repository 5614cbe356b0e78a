"""The operator interpreter: walks a run's graph, node by node, on lanes.

Resuming is deterministic replay: every completed node execution is loaded once, and the
walk returns a completed node's stored result instead of running it again. Branch decisions
depend only on stored results (and a race stores its winner), so a resumed walk takes the
same path as the original up to the first unfinished node.

A strand is a sequential part of the walk with a lane of its own (a connection and a pending
checkpoint); joins and races start one strand per branch.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from dbt_durable.errors import DurableError, StepFailed
from dbt_durable.flow import ast as A
from dbt_durable.runner import faults, results
from dbt_durable.runner.attempts import run_step
from dbt_durable.runner.lane import Lane
from dbt_durable.runner.render import substitute
from dbt_durable.runner.steps import CheckpointWriter
from dbt_durable.runner.values import BreakLoop, NodeProgress, Step, StepSpec, exec_key

if TYPE_CHECKING:
    from dbt_durable.runner.run import RunExecution


class Walker:
    """Walks one run's graph for one :class:`~dbt_durable.runner.run.RunExecution`."""

    def __init__(self, run: RunExecution):
        self.run = run
        self._specs: dict[str, StepSpec] = {}

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
        lane = self.new_lane()
        try:
            value = await self.node(node_id, iters, lane)
            await lane.release()
            return value
        finally:
            await lane.discard()

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
                for task in finished:
                    exc = task.exception()
                    if exc is None:
                        value = task.result()
                        await self.run.writer.checkpoint(
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
        st = self.run.state
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
