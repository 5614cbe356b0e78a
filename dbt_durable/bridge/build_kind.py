"""The ``dbt_build`` run kind: a durable ``dbt build``, one checkpoint per node dbt finishes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dbt_durable.bridge.build import check_target, run_build
from dbt_durable.errors import DurableError, RunCancelled, StepFailed
from dbt_durable.graph.build import ROOT
from dbt_durable.runner import faults, kinds

if TYPE_CHECKING:
    from dbt_durable.runner.run import RunExecution


async def execute_build(run: RunExecution) -> Any:
    """Run the build's ``dbt build``, skipping the nodes checkpointed before; fail if dbt fails.

    The build's folders and arguments come from a row its submitter wrote: they are checked
    against the runner's ``dbt_projects`` before dbt starts."""
    st = run.state
    target = dict(run.row.dbt_args or {})
    try:
        check_target(target, run.settings.dbt_projects)
    except DurableError as exc:
        raise StepFailed(ROOT, str(exc)) from None
    done = [p.result["name"] for p in st.progress.values() if p.completed and p.result]
    st.skipped = len(done)

    async def on_node(info: dict[str, Any]) -> None:
        uid = str(info.get("unique_id"))
        result = {
            "name": info.get("node_name"),
            "status": info.get("node_status"),
            "resource_type": info.get("resource_type"),
        }
        await run.writer.checkpoint(uid, uid, "dbt", 1, result)
        st.executed += 1
        faults.hit("after_commit", uid, run.flow_name)

    code, errors = await run_build(target, done, on_node, run.cancel_event, run.echo)
    if run.cancel_event.is_set():
        raise RunCancelled("cancelled")
    if code != 0:
        detail = "; ".join(f"{uid}: {msg}" if uid else msg for uid, msg in errors)
        failed = next((uid for uid, _ in errors if uid), ROOT)
        raise StepFailed(failed, detail or f"dbt build exited with code {code}")
    return {"nodes_built": st.executed, "nodes_skipped": st.skipped}


kinds.register(kinds.RunKind("dbt_build", execute_build))
