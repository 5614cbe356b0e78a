"""The Python API; it mirrors the CLI one function per command.

Every function validates its input before touching the database, so an invalid flow or bad
argument writes nothing.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from dbt_durable.bridge import build_kind  # noqa: F401 - registers the dbt_build run kind
from dbt_durable.bridge.build import check_target
from dbt_durable.config import Settings
from dbt_durable.errors import ConfigError, GraphChanged, RunNotFound
from dbt_durable.graph.build import FlowGraph, compile_flow
from dbt_durable.graph.explain import explain as explain_graph
from dbt_durable.runner.engine import Engine, Outcome, new_owner_id
from dbt_durable.runner.schedules import check_schedule
from dbt_durable.store.connect import missing_state_as_not_found, open_sync
from dbt_durable.store.migrate import migrate as apply_migrations
from dbt_durable.store.queries import Queries
from dbt_durable.store.runs import CreatedRun, RunRow, build_run_params, new_run_params

DEFAULT_FLOW_NAME = "adhoc"


@dataclass
class Started:
    """A run created (or found by its key) by :meth:`Client.start`."""

    run_id: str
    created: bool
    outcome: Outcome | None = None


@dataclass
class ModelStarted:
    """The run of a durable dbt model found or created by :meth:`Client.prepare_model_run`.

    ``owner``: the runner id it is claimed for (None: another live runner holds it).
    ``kept``: with ``replanned``, the completed node executions kept under a new definition.
    """

    run_id: str
    created: bool
    status: str
    owner: str | None
    kept: list[str] | None = None
    replanned: bool = False


def parse_vars(pairs: list[str]) -> dict[str, str]:
    """``["k=v", ...]`` as a dict; raises :class:`ConfigError` naming the bad item."""
    out: dict[str, str] = {}
    for item in pairs:
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ConfigError(f"malformed --var {item!r}: expected NAME=VALUE with NAME like my_var")
        if name.startswith("sys_"):
            raise ConfigError(f"--var {name}: names starting with sys_ are reserved")
        out[name] = value
    return out


def check_run_id(run_id: str) -> str:
    try:
        return str(uuid.UUID(run_id))
    except ValueError:
        raise RunNotFound(f"{run_id!r} is not a run id (expected a UUID)") from None


class Client:
    """A handle on one database and state schema. Cheap to create; connects per call."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.q = Queries(settings.schema)
        self._checked_schema = False
        self.applied: list[str] = []

    @contextmanager
    def _connect(self, create: bool = False) -> Iterator[psycopg.Connection]:
        """A connection to the database, with the state schema up to date.

        The first connection of a Client upgrades an existing schema; ``create`` also creates
        an absent one (calls that write a run). ``self.applied`` holds what was applied.
        """
        conn = open_sync(self.settings.dsn)
        try:
            if create or not self._checked_schema:
                self.applied = apply_migrations(conn, self.settings.schema, create=create)
                self._checked_schema = True
            with missing_state_as_not_found(self.settings.schema):
                yield conn
        finally:
            conn.close()

    def migrate(self) -> list[str]:
        """Create or upgrade the state schema; returns the migrations applied now."""
        with self._connect(create=True):
            return self.applied

    def start(
        self,
        flow_text: str,
        name: str = DEFAULT_FLOW_NAME,
        key: str | None = None,
        vars: dict[str, str] | None = None,
        fresh: bool = False,
        wait: bool = True,
        origin: str = "<flow>",
        echo: Callable[[str], None] | None = None,
    ) -> Started:
        """Create a run (or find the one with this ``key``) and, with ``wait``, execute it.

        With a ``key``, an existing run whose flow is unchanged is resumed rather than
        duplicated; one whose flow or vars changed raises :class:`GraphChanged` unless
        ``fresh`` is set, which retires the old run's key and starts over. With ``wait`` a new
        run is created already claimed by this process, so no worker can take it.
        """
        flow = compile_flow(flow_text, origin)
        vars = dict(vars or {})
        owner = new_owner_id() if wait else None
        with self._connect(create=True) as conn:
            run_id, created = self._create(conn, flow, name, key, vars, fresh, owner)
        started = Started(run_id, created)
        if wait:
            started.outcome = self._execute(run_id, echo=echo, owner=owner)
        return started

    def _create(
        self,
        conn: psycopg.Connection,
        flow: FlowGraph,
        name: str,
        key: str | None,
        vars: dict[str, str],
        fresh: bool,
        owner: str | None = None,
    ) -> tuple[str, bool]:
        params = new_run_params(flow, name, key, vars, owner, self.settings.lease_ttl_s)
        with conn.transaction():
            found = self._create_row(conn, params)
            if found.created:
                return str(found.run_id), True
            if found.graph_hash == flow.graph_hash and (found.vars or {}) == vars:
                return str(found.run_id), False
            if not fresh:
                what = "flow definition" if found.graph_hash != flow.graph_hash else "vars"
                raise GraphChanged(
                    f"run {found.run_id} ({name!r}, key {key!r}, {found.status}) was started with a "
                    f"different {what}; a resumed run never mixes two versions. Start fresh with "
                    "--fresh (the old run is kept, and cancelled if unfinished)"
                )
            conn.execute(self.q.retire_run, (found.run_id, True))
            return str(self._create_row(conn, params).run_id), True

    def _latest_unfinished(self, conn: psycopg.Connection, name: str) -> CreatedRun | None:
        """The login's newest unfinished (or failed) run of flow ``name``."""
        cur = conn.cursor(row_factory=class_row(CreatedRun))
        return cur.execute(self.q.latest_unfinished, (name,)).fetchone()

    def _create_row(self, conn: psycopg.Connection, params: dict[str, Any]) -> CreatedRun:
        cur = conn.cursor(row_factory=class_row(CreatedRun))
        row = cur.execute(self.q.create_run, params).fetchone()
        assert row is not None  # create_run returns the new run or the login's existing one
        return row

    def start_or_resume(
        self,
        flow_text: str,
        name: str,
        vars: dict[str, str] | None = None,
        fresh: bool = False,
        wait: bool = True,
        origin: str = "<flow>",
    ) -> Started:
        """Resume the latest unfinished run of flow ``name``, or start a new one.

        This is how a re-run of the same dbt command picks up an interrupted model: an
        unfinished (pending, running, waiting or failed) run with the same definition resumes;
        a finished one leaves room for a new run. A changed definition raises
        :class:`GraphChanged` unless ``fresh``, which cancels the old run and starts over.
        """
        flow = compile_flow(flow_text, origin)
        vars = dict(vars or {})
        owner = new_owner_id() if wait else None
        with self._connect(create=True) as conn:
            row = self._latest_unfinished(conn, name)
            if row is not None and row.graph_hash == flow.graph_hash and (row.vars or {}) == vars:
                started = Started(str(row.run_id), False)
            else:
                if row is not None:
                    if not fresh:
                        raise GraphChanged(
                            f"flow {name!r} has an unfinished run {row.run_id} ({row.status}) started with "
                            "a different definition; a resumed run never mixes two versions. Start "
                            "fresh (dbt: --vars '{durable_fresh: true}'; CLI: --fresh), which "
                            "cancels the old run"
                        )
                    conn.execute(self.q.retire_run, (row.run_id, False))
                run_id, created = self._create(conn, flow, name, None, vars, fresh, owner)
                started = Started(run_id, created)
        if wait:
            started.outcome = self._execute(started.run_id, owner=owner)
        return started

    def prepare_model_run(
        self,
        flow_text: str,
        relation: str,
        key: str | None = None,
        vars: dict[str, str] | None = None,
        fresh: bool = False,
        origin: str = "<flow>",
        locate: Callable[[str], str] | None = None,
    ) -> ModelStarted:
        """Find, claim or create the run of a durable dbt model, without executing it.

        A model's runs are keyed by the ``relation`` it builds (its flow name) and, with a
        ``key`` (dbt config ``durable_key``), by that key: targets never share a run. The run
        returned is claimed by this process (``owner``) so that no worker can take it; a run
        that another live runner holds is returned unclaimed (``owner`` None).

        * An unfinished run with the same definition resumes; a failed one is retried.
        * A failed run whose flow changed only in nodes that have not completed continues with
          the new definition, keeping its completed nodes (``kept``).
        * Any other change raises :class:`GraphChanged` naming the completed nodes that changed
          (``locate`` names a node id by its source position), unless ``fresh``.
        * With a key, a completed run is returned as it is (``status`` completed): it is not
          redone. Without one, a finished run leaves room for a new run.
        * ``fresh`` retires the unfinished (or keyed) run and creates a new one.
        """
        from dbt_durable.store.dbt_queries import DbtQueries

        flow = compile_flow(flow_text, origin)
        vars = dict(vars or {})
        dq = DbtQueries(self.settings.schema)
        owner = new_owner_id()
        with self._connect(create=True) as conn:
            row = conn.execute(dq.latest_model_run, {"flow_name": relation, "run_key": key}).fetchone()
            if row is not None:
                run_id, status, graph_hash, run_vars, run_text = (
                    str(row[0]),
                    row[1],
                    row[2],
                    row[3] or {},
                    row[4],
                )
                unfinished = status in ("pending", "running", "waiting", "failed", "quarantined")
                if fresh and (unfinished or key is not None):
                    conn.execute(self.q.retire_run, (run_id, key is not None))
                elif key is not None and status == "completed":
                    return ModelStarted(run_id, False, status, None)
                elif key is not None and status == "cancelled":
                    conn.execute(self.q.retire_run, (run_id, True))
                elif unfinished:
                    same = graph_hash == flow.graph_hash and run_vars == vars
                    if same:
                        claimed = self._claim_for_resume(conn, dq, run_id, owner, graph_hash, None)
                        return ModelStarted(run_id, False, status, owner if claimed else None)
                    changed = self._changed_completed_nodes(conn, dq, run_id, run_text, flow)
                    if run_vars == vars and status == "failed" and not changed:
                        kept = sorted(r[0] for r in conn.execute(dq.completed_nodes, (run_id,)).fetchall())
                        claimed = self._claim_for_resume(conn, dq, run_id, owner, graph_hash, flow)
                        if claimed:
                            return ModelStarted(run_id, False, status, owner, kept=kept, replanned=True)
                    raise GraphChanged(
                        self._changed_message(relation, run_id, status, changed, run_vars != vars, locate)
                    )
            run_id, created = self._create(conn, flow, relation, key, vars, fresh, owner)
        return ModelStarted(run_id, created, "running" if created else "pending", owner if created else None)

    def latest_model_run(self, relation: str, key: str | None = None) -> dict[str, Any] | None:
        """The login's latest run of the model that builds ``relation`` (with ``key``), if any."""
        from dbt_durable.store.dbt_queries import DbtQueries

        with self._connect() as conn:
            cur = conn.execute(
                DbtQueries(self.settings.schema).latest_model_run, {"flow_name": relation, "run_key": key}
            )
            row = cur.fetchone()
            assert cur.description is not None
            return None if row is None else dict(zip([c.name for c in cur.description], row, strict=True))

    def execute_model_run(self, started: ModelStarted) -> Outcome:
        """Execute a run returned by :meth:`prepare_model_run` until it completes, fails or
        parks (a failed run is retried: re-running the dbt command is the explicit request)."""
        return self._execute(started.run_id, retry_failed=True, owner=started.owner)

    def _claim_for_resume(
        self,
        conn: psycopg.Connection,
        dq: Any,
        run_id: str,
        owner: str,
        expected_hash: str,
        flow: FlowGraph | None,
    ) -> bool:
        params: dict[str, Any] = {
            "run_id": run_id,
            "owner": owner,
            "ttl": self.settings.lease_ttl_s,
            "expected_hash": expected_hash,
            "flow_text": None,
            "graph": None,
            "graph_hash": None,
            "plan": None,
        }
        if flow is not None:
            new = new_run_params(flow, "", None, {})
            params.update(
                flow_text=new["flow_text"], graph=new["graph"], graph_hash=new["graph_hash"], plan=new["plan"]
            )
        with conn.transaction():
            row = conn.execute(dq.claim_for_resume, params).fetchone()
        return bool(row and row[0])

    def _changed_completed_nodes(
        self, conn: psycopg.Connection, dq: Any, run_id: str, run_text: str, flow: FlowGraph
    ) -> list[str]:
        """Node ids that the run completed whose definition (or place) differs in ``flow``."""
        from dbt_durable.flow.ast import kind_of
        from dbt_durable.flow.printer import to_text

        old = compile_flow(run_text, f"run {run_id}", validated=True)
        changed: set[str] = set()
        for _exec_key, node_id in conn.execute(dq.completed_nodes, (run_id,)).fetchall():
            parts = node_id.split(".")
            for depth in range(1, len(parts) + 1):
                prefix = ".".join(parts[:depth])
                try:
                    before, after = old.node(prefix), flow.node(prefix)
                except KeyError:
                    changed.add(node_id)
                    break
                same = (
                    kind_of(before) == kind_of(after)
                    if depth < len(parts)
                    else to_text(before) == to_text(after)
                )
                if not same:
                    changed.add(node_id)
                    break
        return sorted(changed)

    @staticmethod
    def _changed_message(
        relation: str,
        run_id: str,
        status: str,
        changed: list[str],
        vars_changed: bool,
        locate: Callable[[str], str] | None,
    ) -> str:
        name = locate or (lambda node_id: f"node {node_id}")
        if vars_changed:
            what = "its vars changed"
        elif changed:
            what = "these completed steps changed: " + "; ".join(name(n) for n in changed)
        else:
            what = f"its flow changed while the run is {status} (only a failed run takes a new definition)"
        return (
            f"{relation} has an unfinished run {run_id} ({status}), and {what}. A resumed run never mixes "
            "two versions of a flow. Start over with --full-refresh (or --vars '{durable_fresh: true}'): "
            "the old run is cancelled and every step runs again, so steps that already committed "
            "outside the model's shadow relation take effect twice unless they are idempotent"
        )

    def create_schemas(self, schemas: list[str]) -> None:
        """CREATE SCHEMA IF NOT EXISTS for each name (models' schemas, for run-operations)."""
        from psycopg import sql

        with self._connect() as conn:
            for schema in schemas:
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))

    def resume(
        self, run_id: str, retry_failed: bool = True, echo: Callable[[str], None] | None = None
    ) -> Outcome:
        """Execute ``run_id`` in this process until it finishes. Completed nodes never re-run."""
        self.get_run(run_id)
        return self._execute(run_id, retry_failed, echo)

    def _execute(
        self,
        run_id: str,
        retry_failed: bool = True,
        echo: Callable[[str], None] | None = None,
        owner: str | None = None,
    ) -> Outcome:
        """:meth:`resume` of a run known to exist (one just created or found); ``owner``: the
        runner id the run was created claimed for."""

        async def go() -> Outcome:
            async with Engine(self.settings, owner=owner) as engine:
                return await engine.execute(run_id, retry_failed=retry_failed, echo=echo)

        return asyncio.run(go())

    def start_build(self, target: dict[str, Any], name: str, resume: bool = False) -> Started:
        """Queue a durable dbt build (``target``: args, project_dir, profiles_dir, target).

        With ``resume``, the latest unfinished build of ``name`` with the same arguments is
        continued instead; it is an error if there is none.
        """
        check_target(target)
        target = {**target, "kind": "dbt_build"}
        with self._connect(create=True) as conn:
            if resume:
                found = self._latest_unfinished(conn, name)
                if found is None:
                    raise RunNotFound(f"no unfinished durable build named {name!r} to resume")
                run = (
                    conn.cursor(row_factory=class_row(RunRow))
                    .execute(self.q.get_run, (found.run_id,))
                    .fetchone()
                )
                assert run is not None
                if dict(run.dbt_args or {}) != target:
                    raise GraphChanged(
                        f"build {run.run_id} was started with other dbt arguments "
                        f"({(run.dbt_args or {}).get('args')}); run it without --resume to start a new build"
                    )
                return Started(str(run.run_id), False)
            return Started(str(self._create_row(conn, build_run_params(name, None, target, {})).run_id), True)

    # -- schedules ---------------------------------------------------------------------------
    def schedule_add(
        self,
        name: str,
        cron: str,
        tz: str,
        target: dict[str, Any],
        catchup: str = "latest",
        max_catchup: int = 10,
        overlap: str = "skip",
    ) -> bool:
        """Create or replace schedule ``name``; returns True if it is new."""
        check_schedule(cron, tz, catchup, overlap)
        if target.get("kind") == "flow":
            compile_flow(str(target["flow"]), f"schedule {name}")
        elif target.get("kind") == "dbt_build":
            check_target(target)
        with self._connect(create=True) as conn:
            row = conn.execute(
                self.q.upsert_schedule,
                {
                    "name": name,
                    "cron": cron,
                    "tz": tz,
                    "target": Jsonb(target),
                    "catchup": catchup,
                    "max_catchup": max_catchup,
                    "overlap": overlap,
                },
            ).fetchone()
            return bool(row and row[0])

    def schedules(self) -> list[dict[str, Any]]:
        with self._connect() as conn:
            cur = conn.execute(self.q.list_schedules)
            assert cur.description is not None
            names = [c.name for c in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def schedule_pause(self, name: str, paused: bool) -> None:
        with self._connect() as conn:
            row = conn.execute(self.q.pause_schedule, (name, paused)).fetchone()
            if not (row and row[0]):
                raise ConfigError(f"no schedule named {name!r}")

    def schedule_remove(self, name: str) -> None:
        with self._connect() as conn:
            row = conn.execute(self.q.remove_schedule, (name,)).fetchone()
            if not (row and row[0]):
                raise ConfigError(f"no schedule named {name!r}")

    def get_run(self, run_id: str) -> dict[str, Any]:
        """The run's row as a dict; raises :class:`RunNotFound`."""
        run_id = check_run_id(run_id)
        with self._connect() as conn:
            cur = conn.execute(self.q.get_run, (run_id,))
            row = cur.fetchone()
            if row is None:
                raise RunNotFound(f"no run {run_id} in schema {self.settings.schema!r}")
            assert cur.description is not None
            return dict(zip([c.name for c in cur.description], row))

    def list_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        with self._connect() as conn:
            cur = conn.execute(self.q.list_runs, (limit,))
            assert cur.description is not None
            names = [c.name for c in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def nodes(self, run_id: str) -> list[dict[str, Any]]:
        run_id = check_run_id(run_id)
        with self._connect() as conn:
            cur = conn.execute(self.q.run_nodes, (run_id,))
            assert cur.description is not None
            names = [c.name for c in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def result(self, run_id: str) -> Any:
        return self.get_run(run_id)["result"]

    def cancel(self, run_id: str, reason: str = "cancelled by user") -> str:
        """Request a cancel; returns the run's state: cancelled, cancelling or its final status."""
        self.get_run(run_id)
        with self._connect() as conn:
            row = conn.execute(self.q.cancel_run, (check_run_id(run_id), reason)).fetchone()
            assert row is not None
            return str(row[0])

    def signal(self, run_id: str, name: str, payload: Any = None) -> int:
        """Send a signal; it is buffered until the run's ``wait_for_signal(name)`` takes it."""
        self.get_run(run_id)
        with self._connect() as conn:
            row = conn.execute(
                self.q.send_signal, (check_run_id(run_id), name, None if payload is None else Jsonb(payload))
            ).fetchone()
            assert row is not None
            return int(row[0])

    def explain(self, target: str) -> str:
        """The graph of a run (with node statuses) or of flow text, as an indented tree."""
        try:
            run_id = str(uuid.UUID(target))
        except ValueError:
            return explain_graph(compile_flow(target))
        run = self.get_run(run_id)
        if run["kind"] == "dbt_build":  # a durable dbt build: its nodes are dbt's
            args = " ".join((run["dbt_args"] or {}).get("args", []))
            done = [f"  {n['status']:<9} {n['exec_key']}" for n in self.nodes(run_id)]
            return "\n".join([f"dbt build {args} ({run['status']})", *done])
        flow = compile_flow(run["flow_text"], f"run {run_id}", validated=True)
        statuses: dict[str, str] = {}
        for node in self.nodes(run_id):
            statuses[node["node_id"]] = node["status"]
        return explain_graph(flow, statuses)


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2, default=str, ensure_ascii=False)
