"""SQL steps: transactional ones on the strand's lane (exactly once), ``transaction=false``
ones in autocommit, checkpointed after they ran (at least once)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dbt_durable.flow import ast as A
from dbt_durable.runner import steps
from dbt_durable.runner.lane import Lane
from dbt_durable.runner.render import substitute
from dbt_durable.runner.values import Step

if TYPE_CHECKING:
    from dbt_durable.runner.run import RunExecution


async def sql_step(run: RunExecution, step: Step, lane: Lane) -> Any:
    """Run one attempt of SQL step ``step``; its result is ``{"rows", "row_count", "columns"}``."""
    ast = step.ast
    assert isinstance(ast, A.Sql)
    conn = await lane.connection()
    spec = step.spec
    text = substitute(run.state, ast.text, step.key, conn) if spec.templated else ast.text
    if spec.transactional:
        return await lane.run(text, spec.timeout_s, step.key, step.node_id, step.attempt, run.engine.clock())
    caps = (run.settings.max_result_rows, run.settings.max_result_bytes)
    if lane.wire is not None:
        lane.wire.detach()  # run_autocommit watches the connection itself
    result = await steps.run_autocommit(conn, text, spec.timeout_s, run.engine.types, run.q.type_names, caps)
    await lane.release()
    await run.writer.checkpoint(step.key, step.node_id, "sql", step.attempt, result)
    return result
