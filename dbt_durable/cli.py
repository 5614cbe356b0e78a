"""The ``dbt-durable`` command line.

Built on click (already a dependency of dbt-core, and what dbt's own CLI uses) and rich (for
tables). The database comes from ``--dsn``, then ``DBT_DURABLE_DSN``, else the embedded
default database under ``.dbt_durable/``, which is started for the command and stopped after.

Exit codes: 0 success; 1 a run failed or was cancelled; 2 bad input or an unreachable database.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from dbt_durable.errors import ConfigError, DurableError

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def _database(obj: dict[str, Any], read_only: bool = False) -> Iterator[str]:
    """The DSN: --dsn / DBT_DURABLE_DSN, else the dbt project's profile, else the embedded db.

    ``read_only`` (status, result, explain): an embedded database that does not exist yet is
    not created; the error says where the command looked and how to point it at a database.
    """
    if obj["dsn_option"]:
        yield obj["dsn_option"]
        return
    from dbt_durable.bridge.profile import find_project, load_target

    project = find_project(obj["project_dir"])
    if project is not None:
        target = load_target(project, obj["profiles_dir"], obj["target"])
        click.echo(f"Using the dbt {target.description}", err=True)
        obj["schema"] = obj["schema"] or target.schema
        obj["concurrency"] = obj["concurrency"] or target.concurrency
        yield target.dsn
        return
    from dbt_durable.embedded import DEFAULT_HOME, embedded_database

    if read_only and not (DEFAULT_HOME.exists() and any(DEFAULT_HOME.iterdir())):
        where = Path(obj["project_dir"] or ".").resolve()
        raise ConfigError(
            "no database to read: there is no --dsn and no DBT_DURABLE_DSN, no dbt project "
            f"(dbt_project.yml) in {where}, and no embedded database under {Path.cwd() / DEFAULT_HOME}/. "
            "Point it at your database with --dsn postgresql://user@host/db (or DBT_DURABLE_DSN), "
            "or run it in your dbt project folder (or give --project-dir)"
        )
    click.echo(
        f"Using the embedded database under {DEFAULT_HOME}/ (set --dsn or DBT_DURABLE_DSN to use yours)",
        err=True,
    )
    with embedded_database(DEFAULT_HOME) as uri:
        yield uri


def _stop_all(workers: list[Any]) -> None:
    for w in workers:
        w.stop()


def _read_logins(path: str) -> list[str]:
    """The DSNs of a logins file: one per line, blank lines and # comments skipped."""
    lines = Path(path).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _client(ctx: click.Context) -> Any:
    from dbt_durable.api import Client
    from dbt_durable.config import Settings

    obj = ctx.obj
    return Client(
        Settings(dsn=obj["dsn"], schema=obj["schema"] or "dbt_durable", concurrency=obj["concurrency"] or 8)
    )


def _handles_errors(func: F) -> F:
    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DurableError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def _with_db(func: F) -> F:
    """Run the command with ``ctx.obj['dsn']`` set, starting the embedded database if needed."""

    @wraps(func)
    @click.pass_context
    def wrapper(ctx: click.Context, *args: Any, **kwargs: Any) -> Any:
        with _database(ctx.obj) as dsn:
            ctx.obj["dsn"] = dsn
            return ctx.invoke(func, *args, **kwargs)

    return _handles_errors(wrapper)  # type: ignore[return-value]


def _reads_db(func: F) -> F:
    """Like :func:`_with_db` for a read-only command: it never creates an embedded database."""

    @wraps(func)
    @click.pass_context
    def wrapper(ctx: click.Context, *args: Any, **kwargs: Any) -> Any:
        with _database(ctx.obj, read_only=True) as dsn:
            ctx.obj["dsn"] = dsn
            return ctx.invoke(func, *args, **kwargs)

    return _handles_errors(wrapper)  # type: ignore[return-value]


# The connection options of the group, also accepted after the subcommand (``dbt-durable
# start ... --dsn X``, as in ``dbt run --target prod``). Each takes a value.
CONNECTION_OPTIONS = (
    "--dsn",
    "--schema",
    "--concurrency",
    "--project-dir",
    "--profiles-dir",
    "--target",
    "-t",
)
# Commands whose own arguments are passed through untouched (dbt's arguments).
PASS_THROUGH = ("build",)


class DurableGroup(click.Group):
    """The command group. Before click parses, it moves connection options written after the
    subcommand in front of it, and protects a flow text that begins with ``--`` (a SQL
    comment) from being read as an option."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, self.rewrite(ctx, list(args)))

    def rewrite(self, ctx: click.Context, args: list[str]) -> list[str]:
        head: list[str] = []
        i = 0
        while i < len(args) and args[i].startswith("-"):  # the group's own options
            head.append(args[i])
            if args[i] in CONNECTION_OPTIONS and i + 1 < len(args):
                head.append(args[i + 1])
                i += 1
            i += 1
        if i >= len(args):
            return args
        name, rest = args[i], args[i + 1 :]
        cmd = self.get_command(ctx, name)
        if cmd is None or name in PASS_THROUGH:
            return args
        path = [name]
        while isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):
            sub = cmd.get_command(ctx, rest[0])
            if sub is None:
                break
            path.append(rest[0])
            cmd, rest = sub, rest[1:]
        takes_value = {
            opt
            for p in cmd.params
            if isinstance(p, click.Option) and not p.is_flag and not p.count
            for opt in p.opts
        }
        own = {opt for p in cmd.params if isinstance(p, click.Option) for opt in p.opts}
        moved: list[str] = []
        kept: list[str] = []
        texts: list[str] = []
        j = 0
        while j < len(rest):
            arg = rest[j]
            if arg == "--":
                kept.extend(rest[j:])
                break
            flag = arg.split("=", 1)[0]
            if flag in CONNECTION_OPTIONS and flag not in own:
                if "=" in arg or j + 1 >= len(rest):
                    moved.append(arg)
                else:
                    moved.extend([arg, rest[j + 1]])
                    j += 1
            elif flag in takes_value and "=" not in arg and j + 1 < len(rest):
                kept.extend([arg, rest[j + 1]])
                j += 1
            elif arg.startswith("-") and any(c.isspace() for c in arg):
                texts.append(arg)  # flow text starting with a -- comment, never an option
            else:
                kept.append(arg)
            j += 1
        if texts:
            kept = [*kept, "--", *texts] if "--" not in kept else [*kept, *texts]
        return [*head, *moved, *path, *kept]


@click.group(cls=DurableGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--dsn",
    envvar="DBT_DURABLE_DSN",
    help="Postgres connection string. Default: the dbt project's profile, else the embedded database.",
)
@click.option(
    "--schema",
    envvar="DBT_DURABLE_SCHEMA",
    default=None,
    help="Schema holding the durable state (default: the profile's durable_schema, else dbt_durable).",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    default=None,
    help="Parallel branches (pooled connections) per runner (default 8).",
)
@click.option(
    "--project-dir", default=None, help="dbt project folder (default: the current folder, if it is one)."
)
@click.option("--profiles-dir", default=None, help="Folder holding profiles.yml, as in dbt.")
@click.option("--target", "-t", default=None, help="dbt target to use, as in dbt.")
@click.version_option(package_name="dbt-durable")
@click.pass_context
def main(
    ctx: click.Context,
    dsn: str | None,
    schema: str | None,
    concurrency: int | None,
    project_dir: str | None,
    profiles_dir: str | None,
    target: str | None,
) -> None:
    """Durable, resumable workflow graphs of SQL steps, checkpointed in PostgreSQL."""
    ctx.obj = {
        "dsn_option": dsn,
        "schema": schema,
        "concurrency": concurrency,
        "project_dir": project_dir,
        "profiles_dir": profiles_dir,
        "target": target,
    }


def _report(outcome: Any, as_json: bool) -> None:
    if as_json:
        return
    if outcome.status == "completed":
        click.echo(
            f"run {outcome.run_id} completed: {outcome.executed} node(s) ran, {outcome.skipped} already done",
            err=True,
        )
    elif outcome.status == "failed":
        click.echo(f"run {outcome.run_id} failed at node {outcome.failed_node}: {outcome.error}", err=True)
    else:
        click.echo(
            f"run {outcome.run_id} is {outcome.status}" + (f": {outcome.error}" if outcome.error else ""),
            err=True,
        )


def _exit_for(outcome: Any) -> None:
    if outcome is not None and outcome.status != "completed":
        sys.exit(1)


@main.command()
@click.argument("expr")
@click.option("--name", default="adhoc", show_default=True, help="Flow name (groups runs; scopes --key).")
@click.option("--key", default=None, help="Run key: starting the same flow with the same key resumes it.")
@click.option("--var", "vars_", multiple=True, metavar="NAME=VALUE", help="A {NAME} variable (repeatable).")
@click.option(
    "--wait/--no-wait",
    default=False,
    help="Run to the end in this process; exit 0 only if the run completed.",
)
@click.option(
    "--fresh", is_flag=True, help="Start over even if a run with this key exists with another flow."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of the run id.")
@click.option("-f", "--file", "from_file", is_flag=True, help="EXPR is a path to a file holding the flow.")
@_with_db
@click.pass_context
def start(
    ctx: click.Context,
    expr: str,
    name: str,
    key: str | None,
    vars_: tuple[str, ...],
    wait: bool,
    fresh: bool,
    as_json: bool,
    from_file: bool,
) -> None:
    """Start a run of the flow EXPR (or resume the run with --key). Prints the run id last."""
    from dbt_durable.api import parse_vars

    origin = "<flow>"
    if from_file:
        origin = expr
        try:
            expr = Path(expr).read_text()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {origin}: {exc.strerror}") from None
    variables = parse_vars(list(vars_))
    started = _client(ctx).start(
        expr,
        name=name,
        key=key,
        vars=variables,
        fresh=fresh,
        wait=wait,
        origin=origin,
        echo=lambda line: click.echo(line, err=True),
    )
    outcome = started.outcome
    if outcome is not None:
        _report(outcome, as_json)
    if as_json:
        payload: dict[str, Any] = {"run_id": started.run_id, "created": started.created}
        if outcome is not None:
            payload.update(
                status=outcome.status,
                result=outcome.result,
                error=outcome.error,
                failed_node=outcome.failed_node,
            )
        click.echo(json.dumps(payload, default=str))
    else:
        click.echo(started.run_id)
    _exit_for(outcome)


@main.command()
@click.argument("run_id")
@_with_db
@click.pass_context
def resume(ctx: click.Context, run_id: str) -> None:
    """Resume RUN_ID from its last checkpoint (a failed run retries its failed node)."""
    outcome = _client(ctx).resume(run_id, echo=lambda line: click.echo(line, err=True))
    _report(outcome, False)
    _exit_for(outcome)


def _views(ctx: click.Context) -> Any:
    from dbt_durable.config import Settings
    from dbt_durable.views.model import Views

    obj = ctx.obj
    return Views(
        Settings(dsn=obj["dsn"], schema=obj["schema"] or "dbt_durable", concurrency=obj["concurrency"] or 8)
    )


_STATUSES = ["pending", "running", "waiting", "completed", "failed", "cancelled", "quarantined"]


@main.command()
@click.argument("run_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table or tree.")
@click.option("--limit", default=20, show_default=True, help="How many runs to list.")
@click.option(
    "--status", "status_filter", type=click.Choice(_STATUSES), default=None, help="Only runs in this state."
)
@click.option("--flow", "flow_filter", default=None, help="Only runs of flows named like this (% wildcards).")
@click.option("--model", "model_filter", default=None, help="Only runs of this dbt model.")
@click.option("--search", default=None, help="Match run id prefix, flow name, key or error text.")
@click.option("--watch", is_flag=True, help="With RUN_ID: show the run live until it ends.")
@click.option("--interval", default=0.5, show_default=True, help="Seconds between refreshes of --watch.")
@click.option(
    "--timeout", "timeout_s", type=float, default=None, help="Stop --watch after this many seconds."
)
@_reads_db
@click.pass_context
def status(
    ctx: click.Context,
    run_id: str | None,
    as_json: bool,
    limit: int,
    status_filter: str | None,
    flow_filter: str | None,
    model_filter: str | None,
    search: str | None,
    watch: bool,
    interval: float,
    timeout_s: float | None,
) -> None:
    """List the latest runs (with progress), or show RUN_ID as a tree of its nodes.

    Exit code with RUN_ID: 0 unless the run failed, was cancelled or is quarantined (1)."""
    from dbt_durable.api import dumps
    from dbt_durable.views import render

    views = _views(ctx)
    if run_id:
        if watch and not as_json:
            view = render.watch(views, run_id, interval, timeout_s=timeout_s)
        else:
            view = views.run_view(run_id)
            if as_json:
                click.echo(dumps(view.to_json()))
            else:
                render.print_run(view)
        if view.status in ("failed", "cancelled", "quarantined"):
            sys.exit(1)
        return
    if watch:
        raise click.UsageError("--watch needs a RUN_ID")
    runs = views.list_runs(limit, status_filter, flow_filter, model_filter, search)
    if as_json:
        for r in runs:
            r["progress"] = r["progress"].__dict__
        click.echo(dumps(runs))
        return
    render.runs_table(runs)


def _print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from dbt_durable.views.render import table

    table(title, columns, rows)


@main.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print {run_id, status, result, error} as JSON.")
@_reads_db
@click.pass_context
def result(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """Print the result of RUN_ID as JSON (exit 1, saying why, if it has not completed)."""
    from dbt_durable.api import dumps

    run = _views(ctx).get_run(run_id)
    if as_json:
        click.echo(dumps({k: run[k] for k in ("run_id", "status", "result", "error", "failed_node")}))
    elif run["status"] == "completed":
        click.echo(dumps(run["result"]))
    else:
        click.echo(
            f"run {run['run_id']} is {run['status']}, so it has no result yet"
            + (f": {run['error']}" if run["error"] else ""),
            err=True,
        )
    if run["status"] != "completed":
        sys.exit(1)


@main.command()
@click.argument("target")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "mermaid", "dot", "svg", "json"]),
    default="text",
    show_default=True,
    help="text tree, Mermaid flowchart, Graphviz DOT, SVG picture, or JSON.",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write to this file.")
@click.option("-f", "--file", "from_file", is_flag=True, help="TARGET is a path to a file holding the flow.")
@click.pass_context
@_handles_errors
def explain(ctx: click.Context, target: str, fmt: str, output: str | None, from_file: bool) -> None:
    """Picture the graph of a run (each node's state, loop iteration counts) or of a flow
    expression TARGET (sequence, join, race, if and loop structure, bound names)."""
    import uuid

    from dbt_durable.api import dumps
    from dbt_durable.graph.explain import picture

    text: str
    try:
        if from_file:
            raise ValueError
        uuid.UUID(target)
    except ValueError:
        from dbt_durable.graph.build import compile_flow

        origin = "<flow>"
        if from_file:
            origin = target
            try:
                target = Path(target).read_text()
            except OSError as exc:
                raise click.BadParameter(f"cannot read {origin}: {exc.strerror}") from None
        flow = compile_flow(target, origin)
        if fmt == "json":
            from dbt_durable.graph.explain import preorder

            text = dumps([{"node_id": n, "depth": d, "label": flow.label(n)} for n, d in preorder(flow)])
        else:
            text = picture(flow, fmt)
    else:
        with _database(ctx.obj, read_only=True) as dsn:
            ctx.obj["dsn"] = dsn
            view = _views(ctx).run_view(target)
        if fmt == "json":
            text = dumps(view.to_json())
        elif view.flow is None:
            from dbt_durable.views.render import plain_tree

            text = "\n".join(plain_tree(view))
        else:
            from dbt_durable.views.render import run_header

            text = picture(view.flow, fmt, view.states, title=run_header(view))
            if fmt == "text":
                text = run_header(view) + "\n" + text
    if output:
        Path(output).write_text(text + "\n")
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text)


@main.command()
@click.argument("run_id")
@click.option("--reason", default="cancelled by user", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_with_db
@click.pass_context
def cancel(ctx: click.Context, run_id: str, reason: str, as_json: bool) -> None:
    """Cancel RUN_ID: it stops at the next node boundary; running statements are interrupted.
    Exits 1 when there was nothing to cancel (the run had already finished)."""
    from dbt_durable.api import dumps

    out = _views(ctx).cancel(run_id, reason)
    if as_json:
        click.echo(dumps(out))
    elif out["outcome"] == "cancelled" and out["changed"]:
        click.echo(f"run {out['run_id']} cancelled (it was {out['was']}): {reason}")
    elif out["outcome"] == "cancelling":
        click.echo(
            f"run {out['run_id']} is {out['was']}: cancel requested; its runner stops it at the next "
            "node boundary and interrupts the running statement"
        )
    else:
        click.echo(f"nothing to cancel: run {out['run_id']} is already {out['outcome']}", err=True)
    if not out["changed"]:
        sys.exit(1)


@main.command()
@click.argument("run_id")
@click.argument("name")
@click.argument("payload", required=False)
@click.option("--json", "as_json", is_flag=True)
@_with_db
@click.pass_context
def signal(ctx: click.Context, run_id: str, name: str, payload: str | None, as_json: bool) -> None:
    """Send signal NAME (with an optional JSON or plain-text PAYLOAD) to RUN_ID. Signals are buffered: one
    sent before the run reaches its wait_for_signal waits for it."""
    from dbt_durable.api import dumps

    value = None
    if payload is not None:
        try:
            value = json.loads(payload)
        except ValueError:
            value = payload  # plain text is sent as a JSON string, as pg_durable does
    out = _views(ctx).signal(run_id, name, value)
    if as_json:
        click.echo(dumps(out))
        return
    head = f"signal {name!r} (#{out['signal_id']}) delivered to run {out['run_id']} ({out['flow_name']})"
    if out["consumed"]:
        click.echo(f"{head}; consumed by wait_for_signal at node {out['consumed_by']}")
    elif out["run_waiting_for_it"]:
        click.echo(
            f"{head}; the run is waiting for it: a worker (or `dbt-durable resume {out['run_id']}`) continues it"
        )
    elif out["run_status"] in ("completed", "failed", "cancelled", "quarantined"):
        click.echo(f"{head}; buffered, but the run is {out['run_status']}, so no wait will consume it")
    else:
        click.echo(f"{head}; buffered until the run reaches wait_for_signal('{name}')")


@main.command()
@click.argument("run_id")
@click.option("--from", "from_node", required=True, help="Node id to restart from (see `explain RUN_ID`).")
@click.option("--json", "as_json", is_flag=True)
@_with_db
@click.pass_context
def restart(ctx: click.Context, run_id: str, from_node: str, as_json: bool) -> None:
    """Queue RUN_ID again from node --from: that node and every node after it run anew (a
    worker executes them); the nodes before it keep their checkpoints and results."""
    from dbt_durable.api import dumps

    out = _views(ctx).restart_from(run_id, from_node)
    if as_json:
        click.echo(dumps(out))
        return
    click.echo(
        f"run {out['run_id']} queued to restart from node {from_node}: {out['nodes']} node(s) will run "
        f"again ({out['executions_deleted']} execution(s) cleared); start a worker, or "
        f"`dbt-durable resume {out['run_id']}`"
    )


@main.command()
@click.option(
    "--window", default=3600.0, show_default=True, help="Seconds of history for latencies and retries."
)
@_reads_db
@click.pass_context
def metrics(ctx: click.Context, window: float) -> None:
    """Print Prometheus metrics (text format): runs by status, node latency histograms,
    retries, claim latency, queue depth and worker liveness."""
    from dbt_durable.views.metrics import prometheus_text

    click.echo(prometheus_text(_views(ctx), window), nl=False)


@main.command()
@click.option(
    "--older-than", "older_than", required=True, help="Age of finished runs to delete: 30d, 12h, 90m."
)
@click.option(
    "--compact", is_flag=True, help="Instead, compact the loop iterations of finished runs that old."
)
@click.option("--batch-nodes", default=50_000, show_default=True, help="Node rows deleted per transaction.")
@click.option("--json", "as_json", is_flag=True)
@_with_db
@click.pass_context
def prune(ctx: click.Context, older_than: str, compact: bool, batch_nodes: int, as_json: bool) -> None:
    """Delete finished runs (completed, failed, cancelled) older than --older-than, with their
    nodes, events and signals, in short transactions (no long locks)."""
    from dbt_durable.api import dumps
    from dbt_durable.views.model import parse_age

    views = _views(ctx)
    age = parse_age(older_than)
    if compact:
        out = views.compact_finished(age)
        message = f"compacted {out['runs_compacted']} run(s): {out['iterations_deleted']} loop iteration row(s) deleted"
    else:
        out = views.prune(age, max_nodes=batch_nodes)
        message = (
            f"pruned {out['runs_deleted']} finished run(s) older than {older_than} "
            f"({out['nodes_deleted']} node row(s), {out['batches']} batch(es))"
        )
    click.echo(dumps(out) if as_json else message)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (keep it local).")
@click.option("--port", default=8765, show_default=True)
@click.option(
    "--token",
    envvar="DBT_DURABLE_UI_TOKEN",
    default=None,
    help="Token that actions need (default: a new one, printed). Without it the page is read-only.",
)
@click.option("--read-only", is_flag=True, help="No actions at all.")
@_reads_db
@click.pass_context
def ui(ctx: click.Context, host: str, port: int, token: str | None, read_only: bool) -> None:
    """A dashboard on http://127.0.0.1:8765: runs, each run's graph live, nodes, schedules,
    workers, and actions (signal, cancel, resume, restart, schedules) behind a token."""
    import secrets as secret_tokens

    try:
        from dbt_durable.ui.app import serve
    except ImportError as exc:
        raise ConfigError(
            f"the dashboard needs the ui extra: pip install 'dbt-durable[ui]' ({exc})"
        ) from None
    if not read_only and not token:
        token = secret_tokens.token_urlsafe(18)
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: binding {host}: the dashboard is reachable from other machines", err=True)
    url = f"http://{host}:{port}/"
    click.echo(f"dashboard on {url}", err=True)
    if token:
        click.echo(f"actions token: {token}   (open {url}?token={token} to act)", err=True)
    else:
        click.echo("read-only: no actions", err=True)
    serve(_views(ctx), host=host, port=port, token=None if read_only else token)


@main.command()
@click.option(
    "--df-aliases",
    is_flag=True,
    help="Also create pg_durable's df schema (df.start, df.status, ...) as aliases of the state schema's functions.",
)
@_with_db
@click.pass_context
def migrate(ctx: click.Context, df_aliases: bool) -> None:
    """Create or upgrade the state schema (safe to run any number of times)."""
    client = _client(ctx)
    applied = client.migrate()
    click.echo("applied: " + ", ".join(applied) if applied else "schema is up to date")
    if df_aliases:
        from dbt_durable.store.connect import open_sync
        from dbt_durable.store.migrate import apply_df_aliases

        with open_sync(client.settings.dsn) as conn:
            apply_df_aliases(conn, client.settings.schema)
        click.echo("df aliases: schema df is up to date")


@main.command()
@click.option(
    "--concurrency",
    "runs_at_once",
    type=click.IntRange(1, 256),
    default=4,
    show_default=True,
    help="Runs executed at the same time.",
)
@click.option("--once", is_flag=True, help="Execute what is runnable now, then exit.")
@click.option(
    "--poll",
    "poll_s",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds between polls (LISTEN/NOTIFY wakes the worker sooner).",
)
@click.option(
    "--park-after",
    "park_after_s",
    type=float,
    default=1.0,
    show_default=True,
    help="A wait longer than this parks the run, freeing the worker.",
)
@click.option(
    "--lease-ttl",
    "lease_ttl_s",
    type=click.FloatRange(1.0, 3600.0),
    default=None,
    help="Seconds a run's lease lasts without a heartbeat: how long a frozen or cut-off worker "
    "keeps its runs (default 15; a dead one's are taken over at once by a re-run).",
)
@click.option(
    "--login",
    "logins",
    multiple=True,
    help="Also serve the runs of the role this DSN logs in as (repeatable; passwords can come "
    "from a pgpass file). Each run executes on connections of its own role's login.",
)
@click.option(
    "--dbt-project",
    "dbt_projects",
    multiple=True,
    type=click.Path(exists=True, file_okay=False),
    help="A dbt project folder whose durable builds and scheduled builds this worker may run "
    "(repeatable; builds of other folders fail).",
)
@click.option(
    "--logins-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="A file of DSNs to serve, one per line (# comments), like --login.",
)
@click.option(
    "--health-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve a health endpoint on this port: GET /healthz answers 200 while the worker loops "
    "are alive and their databases reachable and writable, 503 otherwise (and while draining); "
    "GET /livez checks the loops only. 0 picks a free port (printed at start).",
)
@click.option(
    "--health-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the health endpoint listens on (0.0.0.0 for probes from outside a container).",
)
@_with_db
@click.pass_context
def worker(
    ctx: click.Context,
    runs_at_once: int,
    once: bool,
    poll_s: float,
    park_after_s: float,
    lease_ttl_s: float | None,
    logins: tuple[str, ...],
    dbt_projects: tuple[str, ...],
    logins_file: str | None,
    health_port: int | None,
    health_host: str,
) -> None:
    """Execute queued, due, signalled and orphaned runs, and fire schedules, for the role of
    the connection's login and of each --login. SIGTERM stops it gracefully: running steps
    roll back and their runs are handed back at once (the health endpoint answers 503 from
    the signal on)."""
    import asyncio
    import signal as signals

    from dbt_durable.runner.worker import Worker

    client = _client(ctx)
    settings = replace(
        client.settings,
        concurrency=max(client.settings.concurrency, runs_at_once * 2),
        dbt_projects=tuple(str(Path(p).resolve()) for p in dbt_projects),
        lease_ttl_s=lease_ttl_s or client.settings.lease_ttl_s,
    )
    dsns = [settings.dsn, *logins, *(_read_logins(logins_file) if logins_file else [])]

    def report(outcome: Any) -> None:
        click.echo(
            f"run {outcome.run_id} {outcome.status}" + (f": {outcome.error}" if outcome.error else ""),
            err=True,
        )

    async def go() -> list[Any]:
        workers = [
            Worker(
                replace(settings, dsn=dsn),
                runs_at_once=runs_at_once,
                poll_s=poll_s,
                park_after_s=park_after_s,
                once=once,
                on_outcome=report,
            )
            for dsn in dict.fromkeys(dsns)
        ]
        from dbt_durable.runner import health as health_endpoint

        checks = health_endpoint.Health(workers, [])
        server = None
        if health_port is not None:
            try:
                server = await health_endpoint.serve(checks, health_host, health_port)
            except OSError as exc:
                raise ConfigError(
                    f"cannot serve the health endpoint on {health_host}:{health_port}: {exc}"
                ) from None

        def drain() -> None:
            checks.draining = True
            _stop_all(workers)

        loop = asyncio.get_running_loop()
        for sig in (signals.SIGTERM, signals.SIGINT):
            loop.add_signal_handler(sig, drain)
        click.echo(
            f"worker started ({runs_at_once} run(s) at once per login, {len(workers)} login(s), "
            f"schema {settings.schema})",
            err=True,
        )
        if server is not None:
            click.echo(
                f"health endpoint on http://{health_host}:{health_endpoint.bound_port(server)}/healthz",
                err=True,
            )
        tasks = [asyncio.create_task(w.run()) for w in workers]
        checks.tasks = tasks
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            if server is not None:
                server.close()
                await server.wait_closed()

    all_stats = asyncio.run(go())
    stats = all_stats[0]
    for more in all_stats[1:]:
        stats.claimed += more.claimed
        for status, n in more.finished.items():
            stats.finished[status] = stats.finished.get(status, 0) + n
    click.echo(
        f"worker stopped: claimed {stats.claimed}, "
        + ", ".join(f"{n} {k}" for k, n in sorted(stats.finished.items())),
        err=True,
    )


def _lifts_folder_options(func: F) -> F:
    """Take dbt's --target/-t, --project-dir and --profiles-dir out of a build's dbt arguments
    onto the command's own options, before the database is found from the profile (a durable
    build passes them to dbt itself)."""
    keys = {
        "--target": "target",
        "-t": "target",
        "--project-dir": "project_dir",
        "--profiles-dir": "profiles_dir",
    }

    @wraps(func)
    @click.pass_context
    def wrapper(ctx: click.Context, *args: Any, **kwargs: Any) -> Any:
        given = list(kwargs.get("dbt_args") or ())
        rest: list[str] = []
        i = 0
        while i < len(given):
            flag, eq, value = given[i].partition("=")
            if flag in keys and (eq or i + 1 < len(given)):
                ctx.obj[keys[flag]] = value if eq else given[i + 1]
                i += 1 if eq else 2
                continue
            rest.append(given[i])
            i += 1
        kwargs["dbt_args"] = tuple(rest)
        return ctx.invoke(func, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option(
    "--resume", "resume_", is_flag=True, help="Continue the latest unfinished build with these arguments."
)
@click.option("--name", default=None, help="Build name (default: derived from the dbt arguments).")
@click.option("--wait/--no-wait", default=True, help="Run now (default), or queue it for a worker.")
@click.argument("dbt_args", nargs=-1, type=click.UNPROCESSED)
@_lifts_folder_options
@_with_db
@click.pass_context
def build(ctx: click.Context, resume_: bool, name: str | None, wait: bool, dbt_args: tuple[str, ...]) -> None:
    """A durable `dbt build DBT_ARGS`: every finished node is checkpointed in Postgres, so a
    build killed at model k resumes at model k (--resume). dbt's --target, --project-dir and
    --profiles-dir may also follow `build`, as in `dbt build --target prod`."""
    target = _build_target(ctx, list(dbt_args))
    name = name or "dbt_build:" + (" ".join(dbt_args) or "all")
    client = _client(ctx)
    client.settings = replace(client.settings, dbt_projects=(target["project_dir"],))
    started = client.start_build(target, name, resume=resume_)
    click.echo(
        f"{'resuming' if not started.created else 'starting'} durable build {started.run_id}", err=True
    )
    if not wait:
        click.echo(started.run_id)
        return
    outcome = client.resume(started.run_id, echo=lambda line: click.echo(line, err=True))
    click.echo(
        f"durable build {outcome.run_id} {outcome.status}: {outcome.executed} node(s) built, "
        f"{outcome.skipped} skipped from earlier attempts" + (f"; {outcome.error}" if outcome.error else ""),
        err=True,
    )
    click.echo(started.run_id)
    _exit_for(outcome)


def _build_target(ctx: click.Context, dbt_args: list[str]) -> dict[str, Any]:
    from dbt_durable.bridge.profile import find_project

    obj = ctx.obj
    project = find_project(obj["project_dir"])
    if project is None:
        raise click.UsageError("run it in a dbt project folder, or give --project-dir")
    target: dict[str, Any] = {"args": dbt_args, "project_dir": str(project.resolve())}
    if obj["profiles_dir"]:
        target["profiles_dir"] = str(Path(obj["profiles_dir"]).resolve())
    if obj["target"]:
        target["target"] = obj["target"]
    return target


@main.group()
def schedule() -> None:
    """Scheduled durable refreshes: each cron slot fires exactly once across all workers."""


@schedule.command("add")
@click.argument("name")
@click.option("--cron", required=True, help="Cron expression, e.g. '0 6 * * *'.")
@click.option("--tz", default="UTC", show_default=True, help="IANA time zone of the cron expression.")
@click.option("--flow", "flow", default=None, help="Flow expression to run at each slot.")
@click.option("--dbt-select", default=None, help="dbt selection to build durably at each slot.")
@click.option(
    "--catchup",
    type=click.Choice(["none", "latest", "all"]),
    default="latest",
    show_default=True,
    help="After downtime: fire no missed slot, only the latest, or all (up to --max-catchup).",
)
@click.option("--max-catchup", type=click.IntRange(1, 10_000), default=10, show_default=True)
@click.option(
    "--overlap",
    type=click.Choice(["skip", "allow"]),
    default="skip",
    show_default=True,
    help="A slot whose previous run is unfinished: skip it, or run alongside.",
)
@_with_db
@click.pass_context
def schedule_add(
    ctx: click.Context,
    name: str,
    cron: str,
    tz: str,
    flow: str | None,
    dbt_select: str | None,
    catchup: str,
    max_catchup: int,
    overlap: str,
) -> None:
    """Create or replace schedule NAME."""
    if (flow is None) == (dbt_select is None):
        raise click.UsageError("give exactly one of --flow EXPR or --dbt-select SELECTOR")
    target: dict[str, Any]
    if flow is not None:
        target = {"kind": "flow", "flow": flow}
    else:
        target = {"kind": "dbt_build", **_build_target(ctx, ["--select", str(dbt_select)])}
    created = _client(ctx).schedule_add(name, cron, tz, target, catchup, max_catchup, overlap)
    click.echo(f"schedule {name} {'created' if created else 'updated'}: {cron} ({tz}), catch-up {catchup}")


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True)
@_with_db
@click.pass_context
def schedule_list(ctx: click.Context, as_json: bool) -> None:
    """List schedules."""
    from dbt_durable.api import dumps

    rows = _client(ctx).schedules()
    if as_json:
        click.echo(dumps(rows))
        return
    _print_table(
        "schedules",
        ["name", "cron", "tz", "target", "catch-up", "paused", "last fired slot"],
        [
            [
                r["name"],
                r["cron"],
                r["tz"],
                r["target"].get("flow") or " ".join(r["target"].get("args", [])),
                r["catchup"],
                r["paused"],
                str(r["last_fired_slot"] or "")[:19],
            ]
            for r in rows
        ],
    )


@schedule.command("pause")
@click.argument("name")
@_with_db
@click.pass_context
def schedule_pause(ctx: click.Context, name: str) -> None:
    """Stop firing NAME (its slots are not fired while paused)."""
    _client(ctx).schedule_pause(name, True)
    click.echo(f"schedule {name} paused")


@schedule.command("resume")
@click.argument("name")
@_with_db
@click.pass_context
def schedule_resume(ctx: click.Context, name: str) -> None:
    """Fire NAME again; slots missed while paused follow its catch-up policy."""
    _client(ctx).schedule_pause(name, False)
    click.echo(f"schedule {name} resumed")


@schedule.command("remove")
@click.argument("name")
@_with_db
@click.pass_context
def schedule_remove(ctx: click.Context, name: str) -> None:
    """Delete schedule NAME (its past runs are kept)."""
    _client(ctx).schedule_remove(name)
    click.echo(f"schedule {name} removed")


@main.command()
@click.pass_context
@_handles_errors
def demo(ctx: click.Context) -> None:
    """Build the example dbt project, SIGKILL it halfway, resume it, and show what was skipped."""
    from dbt_durable.demo import run_demo
    from dbt_durable.embedded import DEFAULT_HOME, embedded_database

    if ctx.obj["dsn_option"]:
        run_demo(ctx.obj["dsn_option"], DEFAULT_HOME)
        return
    click.echo(f"Using the embedded database under {DEFAULT_HOME}/", err=True)
    with embedded_database(DEFAULT_HOME) as dsn:
        run_demo(dsn, DEFAULT_HOME)


if __name__ == "__main__":
    main()
