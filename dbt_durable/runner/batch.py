"""Short runs in one transaction: a worker's fast path for queued one-step runs.

Embedding, ingest and webhook pipelines queue many small runs. For a run that is one plain
transactional SQL step, the ordinary path (claim, lease, advisory lock, step, checkpoint,
finish) costs some fifteen statements. Here a worker instead runs a batch of them in one
transaction::

    BEGIN; SELECT take_pending(n); SAVEPOINT b0        -- row locks on n pending runs
    <step 1>; SAVEPOINT b1                             -- one round trip per run
    <step 2>; SAVEPOINT b2
    ...
    SELECT finish_pending(run 1, result 1); ...; COMMIT

Guarantees:

- **Exactly once.** The claim (row locks), every step, every checkpoint and every run's
  outcome commit together or not at all. A worker that dies mid-batch rolls all of it back
  with its connection, and the runs are pending again at once (no lease to wait out).
- **A failing step fails only its run.** Each step runs inside the savepoint taken after the
  one before, so a step that fails (even one that fails to parse) is rolled back alone; its
  run is recorded as failed at that step, with the error, in the same commit. A step is
  therefore never run twice.
- **Only steps that cannot end or outlive the transaction** take this path: no transaction
  control, no session state (see :func:`is_short_step`); any other run is handed to the
  ordinary path (``hand_over``) in the same transaction.
- Savepoints nest one per run, so a batch holds at most :data:`MAX_BATCH` of them, below the
  64 subtransactions PostgreSQL caches per backend.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg

from dbt_durable.errors import DurableError
from dbt_durable.flow import ast as A
from dbt_durable.graph.build import ROOT, FlowGraph, load_flow
from dbt_durable.runner import faults
from dbt_durable.runner.render import substitute
from dbt_durable.runner.results import build_result
from dbt_durable.runner.steps import TypeNames, _describe, text_literal
from dbt_durable.runner.values import RunState
from dbt_durable.runner.wire import Wire
from dbt_durable.store.queries import Queries

MAX_BATCH = 32

# Words that could end the batch's transaction, leave session state for the next run, or
# need a transaction of their own. Read anywhere in the text (strings and comments too), so
# the test errs only towards the ordinary path. "set" is allowed only as part of UPDATE ... SET;
# a DO block needs BEGIN ... END (or a dollar quote), which are refused.
_UNSAFE = re.compile(
    r"\b(commit|rollback|end|abort|prepare|savepoint|release|begin|start|reset|discard|listen"
    r"|unlisten|notify|declare|temp|temporary|lock|vacuum|analyze|copy|call|set_config"
    r"|pg_advisory_lock|pg_advisory_lock_shared|pg_try_advisory_lock|pg_try_advisory_lock_shared)\b",
    re.IGNORECASE,
)
_SET = re.compile(r"\bset\b", re.IGNORECASE)
_UPDATE = re.compile(r"\bupdate\b", re.IGNORECASE)


def is_short_step(ast: A.Node) -> bool:
    """Whether a run whose whole flow is ``ast`` may run in a shared batch transaction: one
    SQL step, transactional, no options, no ``$name`` references, none of the words above."""
    if type(ast) is not A.Sql or ast.options or "$" in ast.text or A.is_expr(ast.text):
        return False  # a SQL expression is evaluated when the run starts, by the ordinary path
    return "{sys_label}" not in ast.text and _safe_text(ast.text)


def _safe_text(text: str) -> bool:
    return not _UNSAFE.search(text) and len(_SET.findall(text)) <= len(_UPDATE.findall(text))


@dataclass
class BatchOutcome:
    """What one batch did: runs completed and failed in it, runs handed to the ordinary path."""

    finished: list[tuple[str, str | None]] = field(default_factory=list)  # (run id, error)
    handed_over: list[str] = field(default_factory=list)
    statements: int = 0

    @property
    def taken(self) -> int:
        return len(self.finished) + len(self.handed_over)


@dataclass
class _Done:
    run_id: str
    result_json: str | None
    error: str | None
    started_at: datetime


async def run_batch(
    conn: psycopg.AsyncConnection,
    q: Queries,
    types: TypeNames,
    caps: tuple[int, int],
    limit: int,
    ttl_s: float,
) -> BatchOutcome:
    """Take up to ``limit`` pending runs of the connection's login and execute the short ones
    in one transaction (see the module docstring). ``conn`` is an idle autocommit connection."""
    out = BatchOutcome()
    limit = max(1, min(limit, MAX_BATCH))
    wire = Wire(conn)
    done: list[_Done] = []
    try:
        await conn.execute(b"BEGIN")
        rows = await (await conn.execute(q.take_pending, (limit,))).fetchall()
        short: list[tuple[str, str]] = []
        others: list[str] = []
        for run_id, kind, plan, flow_text, vars in rows:
            run_id = str(run_id)
            flow = _short_flow(kind, plan, flow_text)
            step_sql = None
            if flow is not None:
                assert isinstance(flow.ast, A.Sql)
                state = RunState(run_id, flow, dict(vars or {}), {})
                # {var}s are text substitution: the text that runs is checked, not the template.
                step_sql = (
                    substitute(state, flow.ast.text, ROOT, None) if "{" in flow.ast.text else flow.ast.text
                )
                if not _safe_text(step_sql):
                    step_sql = None
            if step_sql is None:
                others.append(run_id)
            else:
                short.append((run_id, step_sql))
        if others:
            await conn.execute(q.hand_over, (others, ttl_s))
            out.handed_over = others
        out.statements += 3
        if short:
            await wire.query(b"SAVEPOINT b0")
            out.statements += 1
            for depth, (run_id, step_sql) in enumerate(short, start=1):
                done.append(await _step(conn, wire, q, types, caps, run_id, step_sql, depth))
                out.statements += 2
            finishes = b";".join(_finish_statement(q, d) for d in done)
            wire.detach()
            await wire.query(finishes + b";COMMIT")
            out.statements += len(done) + 1
        else:
            await conn.execute(b"COMMIT")
            out.statements += 1
    except BaseException:
        wire.detach()
        if not conn.broken:
            try:
                await conn.execute(b"ROLLBACK")
            except psycopg.Error:
                pass
        raise
    wire.detach()
    for d in done:
        faults.hit("after_commit", ROOT, "")
        out.finished.append((d.run_id, d.error))
    return out


def _short_flow(kind: str, plan: str | None, flow_text: str) -> FlowGraph | None:
    """The run's flow if the run may take this path. The plan was written by the run's own
    role: it is decoded here, like any plan, and only ever runs as that role."""
    if kind != "flow":
        return None
    try:
        flow = load_flow(plan, flow_text)
    except Exception:  # the ordinary path fails the run with the reason
        return None
    return flow if is_short_step(flow.ast) else None


async def _step(
    conn: psycopg.AsyncConnection,
    wire: Wire,
    q: Queries,
    types: TypeNames,
    caps: tuple[int, int],
    run_id: str,
    step_sql: str,
    depth: int,
) -> _Done:
    """Run one step inside savepoint ``b{depth-1}``, then take ``b{depth}`` after it."""
    started = datetime.now(UTC)
    savepoint = f"SAVEPOINT b{depth}".encode()
    try:
        res = (await wire.query(step_sql.encode() + b"\n;" + savepoint, caps))[-2]
        faults.hit("in_step", ROOT, "")
        if types.missing(res):
            wire.detach()  # psycopg is about to use the connection
            await types.ensure(conn, res, q.type_names)
        return _Done(run_id, json.dumps(build_result(res, types.names, *caps)), None, started)
    except psycopg.Error as exc:
        if conn.broken or exc.sqlstate == "25P01":  # 25P01: the step ended the transaction
            raise
        error = _describe(exc)
    except DurableError as exc:  # a result over its cap
        error = str(exc)
    except Exception as exc:  # e.g. a result too deep to encode: retrying cannot help
        error = f"{type(exc).__name__}: {exc}"[:2000]
    # Undo the step alone (and whatever savepoint followed it), then take the savepoint after
    # it again, so that the next step runs at the next depth.
    await wire.query(f"ROLLBACK TO SAVEPOINT b{depth - 1};".encode() + savepoint)
    return _Done(run_id, None, error, started)


def _finish_statement(q: Queries, d: _Done) -> bytes:
    head, _, _ = q.finish_pending.partition("%s")
    values = ", ".join(
        [
            text_literal(d.run_id),
            text_literal(ROOT),
            text_literal(ROOT),
            "NULL" if d.result_json is None else text_literal(d.result_json),
            "NULL" if d.error is None else text_literal(d.error),
            text_literal(d.started_at),
        ]
    )
    return f"{head}{values})".encode()
