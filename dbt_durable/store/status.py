"""The statuses of runs and node executions: one definition, as the state schema's CHECKs."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """A run's ``runs.status``, plus ``LOST`` (an outcome only: another runner took it over)."""

    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    QUARANTINED = "quarantined"
    LOST = "lost"

    @property
    def finished(self) -> bool:
        """No runner executes it again unless asked to (resume)."""
        return self in _FINISHED


_FINISHED = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.QUARANTINED})


class NodeStatus(StrEnum):
    """A node execution's ``nodes.status``."""

    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
