"""``target/run_results.json`` written as nodes finish, so ``dbt retry`` works after a kill -9.

dbt writes run_results.json once, at the end of a command; a command killed mid-way leaves
the previous command's file (or none), and ``dbt retry`` then re-runs the wrong nodes or
nothing. The durable adapter registers :class:`PartialResults` as a dbt event callback: from
the first node that starts, the file lists every node the command selected, each one
``skipped`` ("not finished") until its ``NodeFinished`` event gives its real status. ``dbt
retry`` re-runs the nodes whose status is error, fail or skipped, so after a kill it re-runs
exactly the nodes that had not finished (a durable model among them resumes its run). dbt's
own file, written when the command ends normally, replaces this one.

Each result is serialized once; a write joins the serialized results and replaces the file
atomically (write to a temporary file, then rename), so a kill mid-write keeps the previous
version.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import UTC
from typing import Any

COMMANDS = {"build", "run", "seed", "snapshot", "test"}  # the commands dbt retry can repeat
PENDING_MESSAGE = "not finished: the command stopped before this node finished (dbt retry runs it)"


class PartialResults:
    """A dbt event callback that keeps ``path`` (run_results.json) current."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.header: dict[str, Any] | None = None
        self.finished: dict[str, str] = {}  # unique_id -> its serialized result
        self.pending: dict[str, str] = {}
        self.started = time.monotonic()
        self.off = False

    def __call__(self, event: Any) -> None:
        name = event.info.name
        if self.off or name not in ("NodeStart", "NodeFinished"):
            return
        try:
            with self.lock:
                if self.header is None and not self._begin():
                    return
                if name == "NodeFinished":
                    self._finish(event.data)
                self._write()
        except Exception:  # never fail dbt's command for its crash-time artifact
            self.off = True

    def _begin(self) -> bool:
        from dbt.artifacts.schemas.run import RunResultsArtifact
        from dbt.flags import get_flags
        from dbt.utils import args_to_dict

        from dbt import selected_resources

        flags = get_flags()
        if getattr(flags, "WHICH", None) not in COMMANDS:
            self.off = True
            return False
        args = args_to_dict(flags)
        empty = RunResultsArtifact.from_execution_results(
            results=[], elapsed_time=0.0, generated_at=_now(), args=args
        ).to_dict(omit_none=False)
        self.header = empty
        for uid in sorted(selected_resources.SELECTED_RESOURCES):
            self.pending[uid] = json.dumps(_result(uid, "skipped", PENDING_MESSAGE))
        return True

    def _finish(self, data: Any) -> None:
        info, result = data.node_info, data.run_result
        uid = info.unique_id
        self.pending.pop(uid, None)
        self.finished[uid] = json.dumps(
            _result(
                uid,
                result.status or info.node_status,
                result.message or None,
                thread=result.thread,
                seconds=result.execution_time,
                failures=result.num_failures or None,
                relation=info.node_relation.relation_name if info.node_relation else None,
            )
        )

    def _write(self) -> None:
        assert self.header is not None
        header = dict(self.header, elapsed_time=time.monotonic() - self.started)
        header["metadata"] = dict(header["metadata"], generated_at=_now().isoformat() + "Z")
        results = ",".join([*self.finished.values(), *self.pending.values()])
        head = json.dumps({k: v for k, v in header.items() if k != "results"}, default=str)
        text = head[:-1] + ', "results": [' + results + "]}"
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.path)


def _now() -> Any:
    from datetime import datetime

    return datetime.now(UTC).replace(tzinfo=None)


def _result(
    uid: str,
    status: str,
    message: str | None,
    thread: str = "",
    seconds: float = 0.0,
    failures: int | None = None,
    relation: str | None = None,
) -> dict[str, Any]:
    return {
        "status": status,
        "timing": [],
        "thread_id": thread,
        "execution_time": seconds,
        "adapter_response": {},
        "message": message,
        "failures": failures,
        "unique_id": uid,
        "compiled": None,
        "compiled_code": None,
        "relation_name": relation,
        "batch_results": None,
    }


def register(project_root: str, target_path: str) -> None:
    """Add a :class:`PartialResults` for this command to dbt's event manager (once)."""
    from dbt_common.events.event_manager_client import get_event_manager

    manager = get_event_manager()
    path = os.path.join(project_root, target_path, "run_results.json")
    if any(isinstance(cb, PartialResults) and cb.path == path for cb in getattr(manager, "callbacks", [])):
        return
    manager.add_callback(PartialResults(path))
