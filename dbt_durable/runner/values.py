"""The values a run's execution passes around: its state, its steps, how it ended, and the
signals (exceptions) that steer the walk."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dbt_durable.errors import DurableError
from dbt_durable.flow import ast as A
from dbt_durable.flow.parser import parse_duration
from dbt_durable.graph.build import FlowGraph
from dbt_durable.store.status import NodeStatus


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
    """How a run ended in this runner: completed, failed, cancelled, waiting or lost."""

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
    def completed(self) -> bool:
        return self.status == NodeStatus.COMPLETED

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
    """Everything one run's walk needs; owned by one run execution."""

    run_id: str
    flow: FlowGraph
    vars: dict[str, str]
    progress: dict[str, NodeProgress]
    bindings: dict[str, Any] = field(default_factory=dict)
    skipped: int = 0
    executed: int = 0
    label: str = ""  # {sys_label}: the run's name (set by the walker when the walk starts)


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


@dataclass(frozen=True, slots=True)
class Step:
    """One attempt of one step execution: the node, the loop iterations it runs in, its
    execution key, its AST and parsed options, and the attempt number (from 1)."""

    node_id: str
    iters: tuple[int, ...]
    key: str
    ast: A.Node
    spec: StepSpec
    attempt: int = 1

    @property
    def kind(self) -> str:
        return A.kind_of(self.ast)


def exec_key(node_id: str, iters: tuple[int, ...]) -> str:
    """A node execution's key: the node id, plus ``#i.j`` for the loop iterations it runs in."""
    return node_id if not iters else f"{node_id}#{'.'.join(map(str, iters))}"
