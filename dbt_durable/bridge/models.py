"""Running durable dbt models: one durable run per model, resumed by the next dbt command.

The flow name of a model's runs is its ``unique_id``. A re-run of the same dbt command resumes
the model's latest unfinished run (completed nodes are skipped); once a run has completed, the
next command starts a new one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dbt_durable.api import Client
from dbt_durable.config import Settings
from dbt_durable.errors import FlowError
from dbt_durable.graph.build import compile_flow

WAIT_MODES = ("park", "block")
DEFAULT_PARK_AFTER_S = 5.0


@dataclass(frozen=True)
class ModelRun:
    """What a durable model reports back to dbt."""

    status: str
    run_id: str
    message: str
    executed: int
    skipped: int
    failed_node: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def settings_for(
    dsn: str, schema: str, concurrency: int, wait: str, park_after: float | None = None
) -> Settings:
    """Settings of a model run: ``wait='park'`` parks waits longer than ``park_after`` seconds
    (default 5), ``'block'`` waits them out."""
    if wait not in WAIT_MODES:
        raise ValueError(f"durable_wait must be one of {', '.join(WAIT_MODES)}, got {wait!r}")
    if park_after is not None and (not isinstance(park_after, (int, float)) or park_after < 0):
        raise ValueError(f"durable_park_after must be a number of seconds >= 0, got {park_after!r}")
    park = (DEFAULT_PARK_AFTER_S if park_after is None else float(park_after)) if wait == "park" else None
    return Settings(dsn=dsn, schema=schema, concurrency=concurrency, park_after_s=park)


def check_flow(flow_text: str, origin: str) -> None:
    """Raise :class:`FlowError` (naming ``origin``, line and column) for an invalid flow."""
    compile_flow(flow_text, origin)


def run_model(
    settings: Settings, flow_text: str, unique_id: str, origin: str, vars: dict[str, str], fresh: bool
) -> ModelRun:
    """Start or resume the model's durable run and wait until it completes, fails or parks."""
    try:
        check_flow(flow_text, origin)
    except FlowError:
        raise
    started = Client(settings).start_or_resume(
        flow_text, name=unique_id, vars=vars, fresh=fresh, origin=origin
    )
    out = started.outcome
    assert out is not None
    if out.status == "completed":
        how = "resumed" if not started.created else "ran"
        msg = f"DURABLE {how} run {out.run_id[:8]}: {out.executed} node(s) ran, {out.skipped} skipped"
    elif out.status == "waiting":
        msg = f"DURABLE run {out.run_id[:8]} parked: {out.error} (a worker or the next run continues it)"
    elif out.status == "failed":
        msg = f"run {out.run_id} failed at node {out.failed_node}: {out.error}"
    else:
        msg = f"run {out.run_id} ended {out.status}: {out.error or ''}"
    return ModelRun(out.status, out.run_id, msg, out.executed, out.skipped, out.failed_node, out.error)
