"""Running durable dbt models: one durable run per model and target, resumed by the next dbt command.

A model's runs are keyed by the relation it builds (database, schema, identifier: its flow
name), and by its ``durable_key`` when it has one, so two targets never share a run, a lock or
a schedule. Two modes (docs/dbt.md):

* ``shadow`` (the default): the flow builds a shadow relation (``{{ this }}`` is rewritten to
  it) and the materialization swaps it in when the run completes, so downstream models see only
  complete versions. Every new run starts from an empty shadow.
* ``incremental``: the flow runs in place on ``{{ this }}`` (appends, merges); use
  ``dbt_durable.is_incremental()`` in it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from dbt_durable.api import Client, ModelStarted
from dbt_durable.bridge.positions import describe_step, relocate
from dbt_durable.config import Settings
from dbt_durable.errors import FlowError, RunNotFound
from dbt_durable.flow import ast as A
from dbt_durable.flow.printer import to_text
from dbt_durable.graph.build import FlowGraph, compile_flow
from dbt_durable.store.connect import open_sync
from dbt_durable.store.dbt_queries import DbtQueries

WAIT_MODES = ("park", "block")
MODES = ("shadow", "incremental")
DEFAULT_PARK_AFTER_S = 5.0

# SQLSTATE classes (or codes) that a re-run can clear, and those that will fail the same way.
TRANSIENT = ("08", "40001", "40P01", "53", "55P03", "57014", "57P01", "57P02", "57P03", "58")
DETERMINISTIC = ("0A", "22", "23", "2B", "42", "P0")


@dataclass(frozen=True)
class ModelRun:
    """What a durable model reports back to dbt. ``publish``: swap the shadow in now."""

    status: str
    run_id: str
    message: str
    executed: int
    skipped: int
    failed_node: str | None = None
    error: str | None = None
    publish: bool = False
    shadow_type: str | None = None  # what the flow built in shadow mode: table, view, ...
    target_type: str | None = None  # what the model's relation is now, if it exists

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ModelSpec:
    """One durable model as the materialization sees it.

    ``relation`` is ``{{ this }}`` as rendered; ``target`` and ``shadow`` are (schema,
    identifier) of the model's relation and of its shadow (None in incremental mode)."""

    flow_text: str
    origin: str
    relation: str
    target: tuple[str, str]
    shadow_relation: str | None = None
    shadow: tuple[str, str] | None = None
    source: str | None = None
    key: str | None = None
    vars: dict[str, str] = field(default_factory=dict)
    fresh: bool = False
    full_refresh: bool = False

    @property
    def build_text(self) -> str:
        """The flow that runs: in shadow mode every ``{{ this }}`` names the shadow."""
        if self.shadow_relation is None:
            return self.flow_text
        return self.flow_text.replace(self.relation, self.shadow_relation)


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


def check_flow(flow_text: str, origin: str, source: str | None = None) -> FlowGraph:
    """The compiled flow; raises :class:`FlowError` naming ``origin`` and the position in the
    model's ``source`` file (not in the rendered text)."""
    try:
        return compile_flow(flow_text, "<flow>")
    except FlowError as exc:
        raise relocate(exc, source, flow_text, origin) from None


def rerun_advice(error: str | None) -> str:
    """Whether re-running can help, from the error's SQLSTATE."""
    found = re.search(r"SQLSTATE ([0-9A-Z]{5})", error or "")
    if not found:
        return "Fix the cause, then run the same command again: completed steps are kept."
    code = found.group(1)
    if any(code.startswith(p) for p in TRANSIENT):
        return (
            f"SQLSTATE {code} is transient (serialization, deadlock, connection, lock or statement "
            "timeout): running the same command again resumes at this step and can succeed."
        )
    if any(code.startswith(p) for p in DETERMINISTIC):
        return (
            f"SQLSTATE {code} is deterministic (syntax, undefined object, data or constraint "
            "error): re-running fails the same way. Fix the step, then run the command again: "
            "completed steps are kept."
        )
    return f"SQLSTATE {code}: fix the cause, then run the same command again (completed steps are kept)."


class Locator:
    """Names a node of the model's flow by its position in the model's source file."""

    def __init__(self, spec: ModelSpec, flow: FlowGraph):
        self.spec = spec
        self.flow = flow

    def __call__(self, exec_key: str) -> str:
        node_id = exec_key.split("#", 1)[0]
        try:
            node = self.flow.node(node_id)
        except KeyError:
            return f"node {exec_key}"
        snippet = node.text if isinstance(node, A.Sql) else to_text(node)
        where = describe_step(
            self.spec.flow_text, self.spec.source, self.spec.origin, node.pos.line, node.pos.col, snippet
        )
        return f"{where} (node {exec_key})"


def relation_kind(settings: Settings, schema: str, identifier: str) -> str | None:
    """'r', 'v', 'm', 'p' for an existing relation, None if there is none."""
    with open_sync(settings.dsn) as conn:
        row = conn.execute(DbtQueries(settings.schema).relation_kind, (schema, identifier)).fetchone()
        return str(row[0]) if row else None


def drop_relation(settings: Settings, schema: str, identifier: str) -> None:
    """Drop the relation (table or view) if it exists, with what depends on it (as dbt does)."""
    kind = relation_kind(settings, schema, identifier)
    if kind is None:
        return
    what = {"v": "VIEW", "m": "MATERIALIZED VIEW"}.get(kind, "TABLE")
    with open_sync(settings.dsn) as conn:
        conn.execute(
            sql.SQL("DROP {} IF EXISTS {}.{} CASCADE").format(
                sql.SQL(what), sql.Identifier(schema), sql.Identifier(identifier)
            )
        )
        conn.commit()


def run_model(settings: Settings, spec: ModelSpec) -> ModelRun:
    """Start, resume or publish the model's durable run and wait until it completes, fails or parks."""
    flow = check_flow(spec.flow_text, spec.origin, spec.source)
    locate = Locator(spec, flow)
    client = Client(settings)
    fresh = spec.fresh or spec.full_refresh
    shadow_exists = spec.shadow is not None and relation_kind(settings, *spec.shadow) is not None
    target_exists = relation_kind(settings, *spec.target) is not None
    if shadow_exists and not fresh:
        try:
            latest = client.latest_model_run(spec.relation, spec.key)
        except RunNotFound:  # no state schema yet
            latest = None
        if latest is not None and latest["status"] == "completed":
            run_id = str(latest["run_id"])
            msg = f"DURABLE published run {run_id[:8]}, completed by a worker"
            return with_types(settings, spec, ModelRun("completed", run_id, msg, 0, 0, publish=True))
    started = client.prepare_model_run(
        spec.build_text, spec.relation, spec.key, spec.vars, fresh, spec.origin, locate
    )
    if started.status == "completed" and not started.created:  # a completed durable_key
        if target_exists:
            msg = f"DURABLE key {spec.key!r} already completed in run {started.run_id[:8]}: nothing to redo"
            return with_types(settings, spec, ModelRun("completed", started.run_id, msg, 0, 0))
        started = client.prepare_model_run(  # the relation was dropped: build it again
            spec.build_text, spec.relation, spec.key, spec.vars, True, spec.origin, locate
        )
    if started.created:
        if spec.shadow is not None:
            drop_relation(settings, *spec.shadow)
        elif spec.full_refresh:
            drop_relation(settings, *spec.target)
    out = client.execute_model_run(started)
    return with_types(settings, spec, _report(spec, started, out, locate))


_TYPES = {"r": "table", "p": "table", "v": "view", "m": "materialized_view"}


def with_types(settings: Settings, spec: ModelSpec, run: ModelRun) -> ModelRun:
    """``run`` with the relation types the materialization needs to swap the shadow in (dbt's
    relation cache does not know relations that the flow created on its own connections)."""
    from dataclasses import replace

    shadow = relation_kind(settings, *spec.shadow) if spec.shadow is not None and run.publish else None
    target = relation_kind(settings, *spec.target)
    return replace(
        run,
        publish=shadow is not None,
        shadow_type=_TYPES.get(shadow or ""),
        target_type=_TYPES.get(target or ""),
    )


def _report(spec: ModelSpec, started: ModelStarted, out: Any, locate: Locator) -> ModelRun:
    counts = f"{out.executed} node(s) ran, {out.skipped} skipped"
    if out.status == "completed":
        if started.replanned:
            kept = "; ".join(locate(k) for k in (started.kept or [])) or "none"
            msg = (
                f"DURABLE continued run {out.run_id[:8]} with the changed flow, keeping "
                f"{len(started.kept or [])} completed node(s) ({kept}): {counts}"
            )
        else:
            how = "ran" if started.created else "resumed"
            msg = f"DURABLE {how} run {out.run_id[:8]}: {counts}"
    elif out.status == "waiting":
        msg = (
            f"DURABLE run {out.run_id[:8]} parked: {out.error}. {spec.relation} keeps its last complete "
            "version until the run completes (a worker or the next dbt run continues it)"
        )
    elif out.status == "failed":
        step = locate(out.failed_node) if out.failed_node else "the run"
        msg = f"run {out.run_id} failed at step {step}: {out.error}\n{rerun_advice(out.error)}"
    else:
        msg = f"run {out.run_id} ended {out.status}: {out.error or ''}"
    publish = out.status == "completed" and spec.shadow is not None
    return ModelRun(
        out.status, out.run_id, msg, out.executed, out.skipped, out.failed_node, out.error, publish
    )


def reconcile_schedules(settings: Settings, project: str, target: str, keep: set[str]) -> list[str]:
    """Remove the login's model schedules of ``project`` and ``target`` not in ``keep``."""
    try:
        with open_sync(settings.dsn) as conn:
            rows = conn.execute(DbtQueries(settings.schema).model_schedules, (project, target)).fetchall()
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        return []  # no state schema yet: nothing registered
    client = Client(settings)
    gone = sorted(str(r[0]) for r in rows if r[0] not in keep)
    for name in gone:
        client.schedule_remove(name)
    return gone


SHADOW_SUFFIX = "__dbt_durable"


def shadow_identifier(identifier: str) -> str:
    """The shadow's name, as dbt-postgres's make_intermediate_relation makes it (63 bytes max)."""
    return identifier[: 63 - len(SHADOW_SUFFIX)] + SHADOW_SUFFIX


def publish_shadow(settings: Settings, target: tuple[str, str], shadow: tuple[str, str]) -> bool:
    """Swap the completed shadow in, in one transaction (the run-operation path; the
    materialization uses dbt's own rename pattern). False if the flow built no shadow."""
    kind = relation_kind(settings, *shadow)
    if kind is None:
        return False
    schema, name = target
    backup = name[: 63 - len("__dbt_backup")] + "__dbt_backup"
    existing = relation_kind(settings, schema, name)
    what = {"v": "VIEW", "m": "MATERIALIZED VIEW"}
    ident = sql.Identifier
    with open_sync(settings.dsn) as conn, conn.transaction():
        if existing is not None:
            conn.execute(
                sql.SQL("ALTER {} {}.{} RENAME TO {}").format(
                    sql.SQL(what.get(existing, "TABLE")), ident(schema), ident(name), ident(backup)
                )
            )
        conn.execute(
            sql.SQL("ALTER {} {}.{} RENAME TO {}").format(
                sql.SQL(what.get(kind, "TABLE")), ident(shadow[0]), ident(shadow[1]), ident(name)
            )
        )
        if existing is not None:
            conn.execute(
                sql.SQL("DROP {} {}.{} CASCADE").format(
                    sql.SQL(what.get(existing, "TABLE")), ident(schema), ident(backup)
                )
            )
    return True
