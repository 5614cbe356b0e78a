"""Kinds of run other than flows, registered by the faces that bring them (the dbt bridge
registers ``dbt_build``), so the runner depends on none of them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dbt_durable.runner.run import RunExecution


@dataclass(frozen=True)
class RunKind:
    """How to execute runs of one kind. ``execute`` returns the run's result or raises
    ``StepFailed``; it checkpoints through ``run.writer``. ``all_results``: a resume loads
    every stored node result (they name what is done)."""

    name: str
    execute: Callable[[RunExecution], Awaitable[Any]]
    all_results: bool = True


_registered: dict[str, RunKind] = {}


def register(kind: RunKind) -> None:
    """Make runs of ``kind.name`` executable in this process."""
    _registered[kind.name] = kind


def find(name: str) -> RunKind | None:
    """The registered kind ``name``; None for flows (the runner's own) and unknown kinds."""
    return _registered.get(name)
