"""The ``dbt-durable`` command line.

Built on click (already a dependency of dbt-core, and what dbt's own CLI uses) and rich (for
tables). The database comes from ``--dsn``, then ``DBT_DURABLE_DSN``, else the embedded
default database under ``.dbt_durable/``, which is started for the command and stopped after.

Exit codes: 0 success; 1 a run failed or was cancelled; 2 bad input or an unreachable database.
"""

from __future__ import annotations

import json
import os
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
def _database(obj: dict[str, Any]) -> Iterator[str]:
    """The DSN: --dsn / DBT_DURABLE_DSN, else the dbt project's profile, else the embedded db."""
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


@main.command()
@click.argument("run_id", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.option("--limit", default=20, show_default=True)
@_with_db
@click.pass_context
def status(ctx: click.Context, run_id: str | None, as_json: bool, limit: int) -> None:
    """Show one run with its nodes, or the latest runs."""
    from dbt_durable.api import dumps

    client = _client(ctx)
    if run_id:
        run = client.get_run(run_id)
        run.pop("flow_text", None)
        nodes = client.nodes(run_id)
        if as_json:
            click.echo(dumps({"run": run, "nodes": nodes}))
            return
        _print_table(
            f"run {run['run_id']} ({run['flow_name']}): {run['status']}",
            ["node", "kind", "status", "attempts", "error"],
            [[n["exec_key"], n["kind"], n["status"], n["attempts"], n["error"] or ""] for n in nodes],
        )
        if run["error"]:
            click.echo(f"error at node {run['failed_node']}: {run['error']}")
        return
    runs = client.list_runs(limit)
    if as_json:
        click.echo(dumps(runs))
        return
    _print_table(
        "runs",
        ["run_id", "flow", "key", "status", "done", "failed node", "created"],
        [
            [
                r["run_id"],
                r["flow_name"],
                r["run_key"] or "",
                r["status"],
                r["nodes_completed"],
                r["failed_node"] or "",
                str(r["created_at"])[:19],
            ]
            for r in runs
        ],
    )


def _print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*[str(v) for v in row])
    Console(width=max(150, int(os.environ.get("COLUMNS", "0") or 0))).print(table)


@main.command()
@click.argument("run_id")
@_with_db
@click.pass_context
def result(ctx: click.Context, run_id: str) -> None:
    """Print the result of RUN_ID as JSON."""
    from dbt_durable.api import dumps

    click.echo(dumps(_client(ctx).result(run_id)))


@main.command()
@click.argument("target")
@click.pass_context
@_handles_errors
def explain(ctx: click.Context, target: str) -> None:
    """Print the graph of a run (with node statuses) or of a flow expression."""
    import uuid

    try:
        uuid.UUID(target)
    except ValueError:
        from dbt_durable.graph.build import compile_flow
        from dbt_durable.graph.explain import explain as explain_graph

        click.echo(explain_graph(compile_flow(target)))
        return
    with _database(ctx.obj) as dsn:
        ctx.obj["dsn"] = dsn
        click.echo(_client(ctx).explain(target))


@main.command()
@click.argument("run_id")
@click.option("--reason", default="cancelled by user", show_default=True)
@_with_db
@click.pass_context
def cancel(ctx: click.Context, run_id: str, reason: str) -> None:
    """Cancel RUN_ID: it stops at the next node boundary; running statements are interrupted."""
    click.echo(_client(ctx).cancel(run_id, reason))


@main.command()
@click.argument("run_id")
@click.argument("name")
@click.argument("payload", required=False)
@_with_db
@click.pass_context
def signal(ctx: click.Context, run_id: str, name: str, payload: str | None) -> None:
    """Send signal NAME (with an optional JSON PAYLOAD) to RUN_ID. Signals are buffered."""
    value = None
    if payload is not None:
        try:
            value = json.loads(payload)
        except ValueError as exc:
            raise click.BadParameter(f"PAYLOAD must be JSON: {exc}") from None
    click.echo(_client(ctx).signal(run_id, name, value))


@main.command()
@_with_db
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Create or upgrade the state schema (safe to run any number of times)."""
    applied = _client(ctx).migrate()
    click.echo("applied: " + ", ".join(applied) if applied else "schema is up to date")


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


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option(
    "--resume", "resume_", is_flag=True, help="Continue the latest unfinished build with these arguments."
)
@click.option("--name", default=None, help="Build name (default: derived from the dbt arguments).")
@click.option("--wait/--no-wait", default=True, help="Run now (default), or queue it for a worker.")
@click.argument("dbt_args", nargs=-1, type=click.UNPROCESSED)
@_with_db
@click.pass_context
def build(ctx: click.Context, resume_: bool, name: str | None, wait: bool, dbt_args: tuple[str, ...]) -> None:
    """A durable `dbt build DBT_ARGS`: every finished node is checkpointed in Postgres, so a
    build killed at model k resumes at model k (--resume)."""
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
