"""What the views show, read from the state schema through row-level security.

:class:`Views` reads (runs, a run's graph with the state of every node, a node's detail,
schedules, workers) and steers through the runtime's functions (signal, cancel, requeue,
restart from a node, prune, compact). It never writes a state table itself.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from dbt_durable.config import Settings
from dbt_durable.errors import ConfigError, DurableError, RunNotFound
from dbt_durable.flow import ast as A
from dbt_durable.flow.refs import VAR
from dbt_durable.graph.build import FlowGraph, compile_flow, load_flow
from dbt_durable.graph.explain import NodeState, annotate, preorder
from dbt_durable.store.connect import missing_state_as_not_found, open_sync
from dbt_durable.store.migrate import migrate as apply_migrations
from dbt_durable.store.queries import Queries
from dbt_durable.store.views import ViewQueries

FINISHED = ("completed", "failed", "cancelled")
_SQLSTATE = re.compile(r"\s*\(SQLSTATE (?P<code>[0-9A-Z]{5})\)")
_SECRETISH = re.compile(r"(?i)(password\s*=\s*|://[^:/@\s]+:)([^\s&@']+)")


def check_run_id(run_id: str) -> str:
    try:
        return str(uuid.UUID(str(run_id)))
    except ValueError:
        raise RunNotFound(f"{run_id!r} is not a run id (expected a UUID)") from None


def parse_error(text: str | None) -> dict[str, str | None]:
    """A stored step error split into message, SQLSTATE, detail and hint (None when absent)."""
    if not text:
        return {"message": None, "sqlstate": None, "detail": None, "hint": None}
    lines = text.split("\n")
    first, rest = lines[0], lines[1:]
    m = _SQLSTATE.search(first)
    out: dict[str, str | None] = {"message": first, "sqlstate": None, "detail": None, "hint": None}
    if m:
        out["sqlstate"] = m["code"]
        out["message"] = (first[: m.start()] + first[m.end() :]).strip()
    for line in rest:
        for key in ("DETAIL", "HINT"):
            if line.startswith(key + ":"):
                out[key.lower()] = line[len(key) + 1 :].strip()
    extra = [line for line in rest if not line.startswith(("DETAIL:", "HINT:"))]
    if extra:
        out["message"] = "\n".join([out["message"] or "", *extra])
    return out


def mask_secrets(text: str) -> str:
    """``text`` with anything shaped like a password (``password=…``, ``://user:…@``) masked."""
    return _SECRETISH.sub(lambda m: m[1] + "***", text)


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None:
        return None
    return max(0.0, ((end or datetime.now(UTC)) - start).total_seconds())


@dataclass
class Progress:
    """Done against total static steps (steps outside loops), and step executions inside
    loops (every iteration of every step in a loop body) counted apart."""

    static_done: int
    static_total: int
    iterations_done: int
    failed: int = 0
    active: int = 0

    def text(self) -> str:
        out = f"{self.static_done}/{self.static_total}"
        if self.iterations_done:
            out += f" +{self.iterations_done} in loops"
        return out


@dataclass
class RunView:
    """A run with the state of every node of its graph (``flow`` is None for a dbt build,
    whose nodes are dbt's, in ``dbt_nodes``)."""

    run: dict[str, Any]
    flow: FlowGraph | None
    states: dict[str, NodeState]
    progress: Progress
    dbt_nodes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return str(self.run["run_id"])

    @property
    def status(self) -> str:
        return str(self.run["status"])

    @property
    def finished(self) -> bool:
        return self.status in FINISHED or self.status == "quarantined"

    def source_of(self, node_id: str) -> str | None:
        """``line:col`` of a node in the run's flow text."""
        return source_position(self.run, self.flow, node_id)

    def to_json(self) -> dict[str, Any]:
        run = {k: v for k, v in self.run.items() if k not in ("plan_text",)}
        nodes = []
        if self.flow is not None:
            for node_id, depth in preorder(self.flow):
                st = self.states[node_id]
                nodes.append(
                    {
                        "node_id": node_id,
                        "depth": depth,
                        "kind": A.kind_of(self.flow.node(node_id)),
                        "label": self.flow.label(node_id),
                        "state": st.state,
                        "executions": st.executions,
                        "iterations": st.iterations,
                        "attempts": st.attempts,
                        "seconds": st.seconds,
                        "error": st.error if not self.flow.children(node_id) else None,
                        "source": self.source_of(node_id),
                    }
                )
        else:
            nodes = [
                {
                    "node_id": n["node_id"],
                    "kind": "dbt",
                    "state": n["last_status"],
                    "error": n["last_error"],
                }
                for n in self.dbt_nodes
            ]
        return {
            "run": run,
            "progress": self.progress.__dict__,
            "nodes": nodes,
            "failure": failure_report(self) if self.status in ("failed", "quarantined") else None,
        }


def source_position(run: dict[str, Any], flow: FlowGraph | None, node_id: str) -> str | None:
    """``line:col`` of node ``node_id`` (or an exec key) in the run's own flow text."""
    if flow is None:
        return None
    exec_node = node_id.split("#", 1)[0]
    try:
        pos = flow.node(exec_node).pos
        if not pos.line:  # a plan decoded from JSON has no positions: parse the stored text
            pos = compile_flow(run["flow_text"], validated=True).node(exec_node).pos
    except (KeyError, DurableError):
        return None
    return f"{pos.line}:{pos.col}" if pos.line else None


def failure_report(view: RunView) -> dict[str, Any]:
    """What a person needs to act on a failed run: the node (path, source line), its SQL,
    the Postgres error with SQLSTATE, detail and hint, the attempts, and the commands."""
    run = view.run
    node_key = run.get("failed_node")
    node_id = str(node_key).split("#", 1)[0] if node_key else None
    st = view.states.get(node_id) if node_id else None
    sql = None
    if view.flow is not None and node_id and node_id in view.states:
        node = view.flow.node(node_id)
        if isinstance(node, A.Sql):
            sql = mask_secrets(node.text)
    error = parse_error(run.get("error") or (st.error if st else None))
    rid = view.run_id
    return {
        "node": node_key,
        "kind": A.kind_of(view.flow.node(node_id))
        if view.flow is not None and node_id in view.states
        else None,
        "source": view.source_of(node_id) if node_id else None,
        "sql": sql,
        "attempts": st.attempts if st else None,
        **error,
        "resume_command": f"dbt-durable resume {rid}",
        "rerun_command": f"dbt-durable ui  (then: restart from node {node_id})" if node_id else None,
        "sql_resume": f"-- or let a worker retry it: SELECT {{schema}}.requeue_run('{rid}');",
    }


class Views:
    """Reads and steering actions on one database and state schema. Connects per call."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.v = ViewQueries(settings.schema)
        self.q = Queries(settings.schema)
        self._checked = False

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        """A connection (autocommit) with an existing state schema upgraded; a missing one is
        reported as :class:`RunNotFound` (a view never creates the schema)."""
        conn = open_sync(self.settings.dsn)
        try:
            if not self._checked:
                apply_migrations(conn, self.settings.schema, create=False)
                self._checked = True
            conn.autocommit = True
            with missing_state_as_not_found(self.settings.schema):
                yield conn
        finally:
            conn.close()

    @staticmethod
    def _rows(cur: psycopg.Cursor[Any]) -> list[dict[str, Any]]:
        assert cur.description is not None
        names = [c.name for c in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    # -- reads ----------------------------------------------------------------------------
    def list_runs(
        self,
        limit: int = 20,
        status: str | None = None,
        flow: str | None = None,
        model: str | None = None,
        search: str | None = None,
    ) -> list[dict[str, Any]]:
        """The latest runs (newest first) with their progress; ``flow`` is an ILIKE pattern
        (``%`` wildcards), ``model`` a dbt model name, ``search`` matches id, flow, key, error."""
        with self.connect() as conn:
            rows = self._rows(
                conn.execute(
                    self.v.list_runs,
                    {
                        "limit": limit,
                        "status": status,
                        "flow": flow,
                        "model": model,
                        "search": search or None,
                    },
                )
            )
        for r in rows:
            r["progress"] = Progress(
                int(r["static_done"] or 0),
                int(r["static_total"] or 0),
                int(r["iterations_done"] or 0) + int(r["compacted_iterations"] or 0),
                int(r["failed"] or 0),
                int(r["active"] or 0),
            )
            r["duration_s"] = seconds_between(r["started_at"] or r["created_at"], r["finished_at"])
        return rows

    def get_run(self, run_id: str, conn: psycopg.Connection | None = None) -> dict[str, Any]:
        run_id = check_run_id(run_id)
        if conn is None:
            with self.connect() as c:
                return self.get_run(run_id, c)
        rows = self._rows(conn.execute(self.v.get_run, (run_id,)))
        if not rows:
            raise RunNotFound(f"no run {run_id} in schema {self.settings.schema!r}")
        return rows[0]

    def run_view(self, run_id: str) -> RunView:
        """The run and the state of every node of its graph (aggregated in the database: one
        row per node, however many loop iterations it ran)."""
        with self.connect() as conn:
            return self.run_view_on(conn, run_id)

    def run_view_on(self, conn: psycopg.Connection, run_id: str) -> RunView:
        """:meth:`run_view` on an open connection (the dashboard's feed holds one)."""
        run = self.get_run(run_id, conn)
        params = {"run_id": run["run_id"]}
        counts = self._rows(conn.execute(self.v.node_counts, params))
        open_rows = []
        if any(c["status"] != "completed" for c in counts):
            open_rows = self._rows(conn.execute(self.v.node_open, params))
        compacted = self._rows(conn.execute(self.v.loop_counts, params))
        return self.assemble(run, node_aggregates(counts, open_rows, compacted))

    def assemble(self, run: dict[str, Any], aggs: list[dict[str, Any]]) -> RunView:
        status = str(run["status"])
        if run["kind"] == "dbt_build":
            done = sum(1 for a in aggs if a["last_status"] == "completed")
            return RunView(run, None, {}, Progress(done, len(aggs), 0), dbt_nodes=aggs)
        flow = load_flow(run.get("plan_text"), run["flow_text"])
        if flow.text != run["flow_text"] and run.get("plan_text") is None:
            flow = compile_flow(run["flow_text"], validated=True)
        steps: dict[str, NodeState] = {}
        for a in aggs:
            if a["running"]:
                state = "running"
            elif a["waiting"]:
                state = "waiting"
            else:
                state = str(a["last_status"] or "pending")
            steps[a["node_id"]] = NodeState(
                state=state,
                executions=int(a["executions"]),
                completed=int(a["completed"]),
                attempts=int(a["attempts"] or 0),
                seconds=seconds_between(a["last_started"], a["last_finished"])
                if a["last_finished"] or state == "running"
                else None,
                error=a["last_error"] if state == "failed" else None,
                extra={"wake_at": a["last_wake_at"]},
            )
        states = annotate(flow, steps, status)
        in_loop = _in_loop_steps(flow)
        static = [n for n in flow.step_ids if n not in in_loop]
        progress = Progress(
            sum(1 for n in static if n in steps and steps[n].state == "completed"),
            len(static),
            sum(steps[n].completed for n in in_loop if n in steps),
            sum(1 for s in steps.values() if s.state == "failed"),
            sum(1 for s in steps.values() if s.state in ("running", "waiting")),
        )
        return RunView(run, flow, states, progress)

    def node_detail(self, run_id: str, node_id: str, limit: int = 20) -> dict[str, Any]:
        """One node of a run: its SQL rendered with the run's values (secrets masked), its
        executions (latest first) with results and errors, and its events."""
        with self.connect() as conn:
            run = self.get_run(run_id, conn)
            rid = run["run_id"]
            execs = self._rows(
                conn.execute(self.v.node_executions, {"run_id": rid, "node_id": node_id, "limit": limit})
            )
            events = self._rows(
                conn.execute(self.v.run_events, {"run_id": rid, "exec_prefix": node_id, "limit": 50})
            )
            flow = None
            node = None
            rendered = None
            template = None
            if run["kind"] == "flow":
                flow = load_flow(run.get("plan_text"), run["flow_text"])
                try:
                    node = flow.node(node_id)
                except KeyError:
                    raise RunNotFound(f"run {rid} has no node {node_id}") from None
                if isinstance(node, A.Sql):
                    template = node.text
                    rendered = self._render(conn, run, flow, node.text, node_id)
        for e in execs:
            e["error_parts"] = parse_error(e["error"])
            e["seconds"] = seconds_between(e["started_at"], e["finished_at"]) if e["finished_at"] else None
        return {
            "run_id": str(rid),
            "node_id": node_id,
            "kind": A.kind_of(node) if node is not None else (execs[0]["exec_key"] if execs else None),
            "label": flow.label(node_id) if flow is not None else node_id,
            "source": source_position(run, flow, node_id),
            "template": mask_secrets(template) if template else None,
            "rendered_sql": mask_secrets(rendered) if rendered else None,
            "executions": execs,
            "events": events,
        }

    def _render(
        self, conn: psycopg.Connection, run: dict[str, Any], flow: FlowGraph, text: str, node_id: str
    ) -> str:
        """``text`` with the run's ``{vars}`` and the latest results of the binds it names.
        ``{env:NAME}`` is never expanded here; a reference that cannot be rendered stays."""
        from dbt_durable.runner import results

        system = {"sys_run_id": str(run["run_id"]), "sys_node": node_id}
        vars = dict(run.get("vars") or {})
        text = VAR.sub(lambda m: system.get(m["name"]) or vars.get(m["name"], m.group()), text)
        binds: dict[str, str] = {}  # a bind whose body is a step: its result is that step's
        for bid, _ in preorder(flow):
            b = flow.node(bid)
            if isinstance(b, A.Bind) and f"{bid}.0" in flow.step_ids:
                binds[b.name] = f"{bid}.0"
        if not binds:
            return text
        rows = conn.execute(
            self.v.latest_results, {"run_id": run["run_id"], "node_ids": list(binds.values())}
        ).fetchall()
        by_node = {r[0]: r[1] for r in rows}
        bindings = {name: by_node[n] for name, n in binds.items() if n in by_node}
        try:
            return str(results.render(text, bindings, None))
        except Exception:  # a reference not yet bound, or refused in quotes: show the template
            return text

    def events(self, run_id: str, limit: int = 100) -> list[dict[str, Any]]:
        with self.connect() as conn:
            return self._rows(
                conn.execute(
                    self.v.run_events, {"run_id": check_run_id(run_id), "exec_prefix": None, "limit": limit}
                )
            )

    def signals(self, run_id: str) -> list[dict[str, Any]]:
        with self.connect() as conn:
            return self._rows(conn.execute(self.v.run_signals, (check_run_id(run_id),)))

    def schedules(self) -> list[dict[str, Any]]:
        """Schedules with their next fire times and last runs."""
        from croniter import croniter

        with self.connect() as conn:
            rows = self._rows(conn.execute(self.v.schedules))
        import zoneinfo

        for r in rows:
            try:
                tz = zoneinfo.ZoneInfo(r["tz"])
                it = croniter(r["cron"], datetime.now(tz))
                r["next_slots"] = [it.get_next(datetime).astimezone(UTC) for _ in range(3)]
            except Exception:  # a broken schedule shows its error instead
                r["next_slots"] = []
        return rows

    def workers(self) -> list[dict[str, Any]]:
        with self.connect() as conn:
            return self._rows(conn.execute(self.v.workers))

    # -- steering -------------------------------------------------------------------------
    def signal(self, run_id: str, name: str, payload: Any = None, settle_s: float = 1.5) -> dict[str, Any]:
        """Send a signal and report what became of it: consumed by a wait (which node), or
        buffered (with whether the run is waiting for it)."""
        rid = check_run_id(run_id)
        with self.connect() as conn:
            run = self.get_run(rid, conn)
            row = conn.execute(
                self.q.send_signal, (rid, name, None if payload is None else Jsonb(payload))
            ).fetchone()
            assert row is not None
            signal_id = int(row[0])
            deadline = time.monotonic() + (settle_s if run["status"] in ("running", "waiting") else 0)
            while True:
                state = conn.execute(self.v.signal_state, (rid, signal_id)).fetchone()
                assert state is not None
                if state[0] is not None or time.monotonic() >= deadline:
                    break
                time.sleep(0.1)
        consumed_by, _, status, waiting_for = state
        return {
            "run_id": rid,
            "flow_name": run["flow_name"],
            "signal": name,
            "signal_id": signal_id,
            "consumed": consumed_by is not None,
            "consumed_by": consumed_by,
            "run_status": status,
            "run_waiting_for_it": status == "waiting" and waiting_for == name,
        }

    def cancel(self, run_id: str, reason: str = "cancelled by user") -> dict[str, Any]:
        """Cancel a run; ``changed`` is False when there was nothing to cancel."""
        rid = check_run_id(run_id)
        with self.connect() as conn:
            run = self.get_run(rid, conn)
            before = run["status"]
            row = conn.execute(self.q.cancel_run, (rid, reason)).fetchone()
            assert row is not None
        outcome = str(row[0])
        changed = outcome in ("cancelled", "cancelling") and before != "cancelled"
        return {"run_id": rid, "was": before, "outcome": outcome, "changed": changed, "reason": reason}

    def requeue(self, run_id: str) -> str:
        """Queue a failed or quarantined run for a worker (it resumes at its failed node)."""
        rid = check_run_id(run_id)
        with self.connect() as conn:
            row = conn.execute(self.v.requeue_run, (rid,)).fetchone()
            assert row is not None
            return str(row[0])

    def restart_from(self, run_id: str, node_id: str) -> dict[str, Any]:
        """Restart a finished flow run from ``node_id``: that node, its subtree and every node
        after it in the flow's order run again (a worker executes it); the nodes before keep
        their checkpoints."""
        rid = check_run_id(run_id)
        with self.connect() as conn:
            run = self.get_run(rid, conn)
            if run["kind"] != "flow":
                raise ConfigError("a durable dbt build is resumed, not restarted from a node")
            flow = load_flow(run.get("plan_text"), run["flow_text"])
            order = [n for n, _ in preorder(flow)]
            if node_id not in order:
                raise RunNotFound(f"run {rid} has no node {node_id}")
            again = order[order.index(node_id) :]
            try:
                row = conn.execute(self.v.restart_run, (rid, again)).fetchone()
            except psycopg.errors.ObjectNotInPrerequisiteState as exc:
                raise ConfigError(str(exc.diag.message_primary or exc)) from None
            assert row is not None
        return {"run_id": rid, "from_node": node_id, "nodes": len(again), "executions_deleted": int(row[0])}

    def prune(self, older_than_s: float, max_runs: int = 500, max_nodes: int = 50_000) -> dict[str, int]:
        """Delete finished runs older than ``older_than_s`` seconds, in short batches."""
        runs = nodes = batches = 0
        with self.connect() as conn:
            while True:
                row = conn.execute(self.v.prune_runs, (older_than_s, max_runs, max_nodes)).fetchone()
                assert row is not None
                batches += 1
                runs, nodes = runs + int(row[0]), nodes + int(row[1])
                if not row[0] and not row[1]:
                    break
        return {"runs_deleted": runs, "nodes_deleted": nodes, "batches": batches}

    def compact(self, run_id: str, max_nodes: int = 50_000) -> int:
        """Compact the loop iterations of a completed or cancelled run; returns rows deleted."""
        rid = check_run_id(run_id)
        total = 0
        with self.connect() as conn:
            while True:
                try:
                    row = conn.execute(self.v.compact_run, (rid, max_nodes)).fetchone()
                except psycopg.errors.ObjectNotInPrerequisiteState as exc:
                    raise ConfigError(str(exc.diag.message_primary or exc)) from None
                assert row is not None
                total += int(row[0])
                if not row[0]:
                    return total

    def schedule_pause(self, name: str, paused: bool) -> None:
        with self.connect() as conn:
            row = conn.execute(self.q.pause_schedule, (name, paused)).fetchone()
        if not (row and row[0]):
            raise ConfigError(f"no schedule named {name!r} of this login")

    def schedule_fire(self, name: str, slots: list[datetime] | None = None) -> list[dict[str, Any]]:
        """Create the runs of schedule ``name`` for ``slots`` (a backfill), or for now (trigger
        now, keyed ``manual:<time>``). A slot's run is keyed by the slot exactly as a worker
        keys it, so a backfilled slot is never run twice. Runs are submitted by this login."""
        from dbt_durable.runner.schedules import schedule_flow_name
        from dbt_durable.store.runs import build_run_params, new_run_params

        rows = [r for r in self.schedules() if r["name"] == name]
        if not rows:
            raise ConfigError(f"no schedule named {name!r}")
        sched = rows[0]
        target = dict(sched["target"])
        flow_name = schedule_flow_name(name, target)
        keys = [(s.astimezone(UTC), s.astimezone(UTC).isoformat()) for s in slots] if slots else []
        if not slots:
            now = datetime.now(UTC)
            keys = [(now, f"manual:{now.isoformat()}")]
        out = []
        with self.connect() as conn:
            for slot, key in keys:
                vars = {"schedule_slot": slot.isoformat(), "schedule_name": name}
                if target.get("kind") == "dbt_build":
                    params = build_run_params(flow_name, key, target, vars)
                else:
                    flow = compile_flow(str(target["flow"]), f"schedule {name}")
                    params = new_run_params(flow, flow_name, key, vars)
                row = conn.execute(self.q.create_run, params).fetchone()
                assert row is not None
                out.append({"slot": slot, "key": key, "run_id": str(row[0]), "created": bool(row[1])})
        return out

    def backfill_slots(self, name: str, start: datetime, end: datetime, limit: int = 1000) -> list[datetime]:
        """The cron slots of schedule ``name`` in [start, end] (at most ``limit``)."""
        import zoneinfo

        from croniter import croniter

        rows = [r for r in self.schedules() if r["name"] == name]
        if not rows:
            raise ConfigError(f"no schedule named {name!r}")
        tz = zoneinfo.ZoneInfo(rows[0]["tz"])
        it = croniter(rows[0]["cron"], (start - timedelta(seconds=1)).astimezone(tz))
        out: list[datetime] = []
        while len(out) < limit:
            slot = it.get_next(datetime)
            if slot > end:
                break
            out.append(slot.astimezone(UTC))
        return out

    def compact_finished(self, older_than_s: float) -> dict[str, int]:
        """Compact every completed or cancelled run that finished more than ``older_than_s``
        seconds ago and still holds loop iterations."""
        with self.connect() as conn:
            ids = [str(r[0]) for r in conn.execute(self.v.compactable_runs, (older_than_s,)).fetchall()]
        deleted = sum(self.compact(rid) for rid in ids)
        return {"runs_compacted": len(ids), "iterations_deleted": deleted}


def node_aggregates(
    counts: list[dict[str, Any]], open_rows: list[dict[str, Any]], compacted: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One row per node id from the per-status counts, the latest unfinished executions and
    the compacted loop counts (the shape :meth:`Views.assemble` reads)."""
    out: dict[str, dict[str, Any]] = {}
    for c in counts:
        a = out.setdefault(
            c["node_id"],
            {
                "node_id": c["node_id"],
                "executions": 0,
                "completed": 0,
                "failed": 0,
                "running": 0,
                "waiting": 0,
                "cancelled": 0,
                "attempts": 0,
                "started_at": None,
                "finished_at": None,
                "last_started": None,
                "last_finished": None,
                "last_status": None,
                "last_error": None,
                "last_wake_at": None,
                "last_exec_key": None,
                "completed_last_started": None,
            },
        )
        n = int(c["executions"])
        a["executions"] += n
        a[c["status"]] = a.get(c["status"], 0) + n
        a["attempts"] = max(a["attempts"], int(c["attempts"] or 0))
        a["started_at"] = min(filter(None, (a["started_at"], c["first_started"])), default=None)
        a["finished_at"] = max(filter(None, (a["finished_at"], c["last_finished"])), default=None)
        if c["status"] == "completed":
            a["last_status"] = "completed"
            a["last_started"], a["last_finished"] = c["last_started"], c["last_finished"]
    for o in open_rows:
        a = out[o["node_id"]]
        if a["last_started"] is None or o["started_at"] >= a["last_started"]:
            a["last_status"], a["last_error"], a["last_wake_at"] = o["status"], o["error"], o["wake_at"]
            a["last_started"], a["last_finished"], a["last_exec_key"] = (
                o["started_at"],
                o["finished_at"],
                o["exec_key"],
            )
    for x in compacted:
        if x["node_id"] in out:
            out[x["node_id"]]["executions"] += int(x["compacted"])
            out[x["node_id"]]["completed"] += int(x["compacted"])
    return list(out.values())


def _in_loop_steps(flow: FlowGraph) -> set[str]:
    out: set[str] = set()
    for node_id, _ in preorder(flow):
        if isinstance(flow.node(node_id), A.Loop):
            stack = list(flow.children(node_id))
            while stack:
                n = stack.pop()
                kids = flow.children(n)
                if not kids and n in flow.step_ids:
                    out.add(n)
                stack.extend(kids)
    return out


def parse_age(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` (or plain seconds) as seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not m:
        raise ConfigError(f"bad age {text!r}: use a number with s, m, h, d or w (e.g. 30d)")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m[2]]
    return float(m[1]) * unit
