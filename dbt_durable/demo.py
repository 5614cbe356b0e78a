"""``dbt-durable demo``: the example dbt project, killed halfway and resumed.

1. ``dbt build`` of example_project is SIGKILLed inside the third ingest batch.
2. The same ``dbt build`` again resumes: finished batches and models are skipped.
3. The approval flow, parked on a signal, is approved and finished.
4. The results: published tables, the fan-out summary and a pgvector similarity search,
   embedded by the local OpenAI-compatible endpoint (dbt_durable.embed) the demo starts.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import click
import httpx
import psycopg
from psycopg import conninfo, sql

from dbt_durable.resources import example_project_dir

STATE_SCHEMA = "dbt_durable_demo"
PIPELINE = "model.shop.orders_pipeline"
KILL_AT = f"in_step@0.5.0.0#2@{PIPELINE}"  # inside the third ingest batch's transaction


def example_project_source() -> Path:
    """The example project shipped with the package (or the checkout's example_project/)."""
    return example_project_dir()


def _dbt() -> list[str]:
    exe = shutil.which("dbt")
    return [exe] if exe else [sys.executable, "-c", "from dbt.cli.main import cli; cli()"]


def _env(dsn: str) -> dict[str, str]:
    params = conninfo.conninfo_to_dict(dsn)
    env = dict(os.environ)
    env.pop("DBT_DURABLE_FAULT", None)
    env.update(
        DBT_DURABLE_PGHOST=str(params.get("host", "localhost")),
        DBT_DURABLE_PGPORT=str(params.get("port") or 5432),
        DBT_DURABLE_PGUSER=str(params.get("user") or "postgres"),
        DBT_DURABLE_PGPASSWORD=str(params.get("password") or ""),
        DBT_DURABLE_PGDATABASE=str(params.get("dbname") or "postgres"),
        DBT_DURABLE_SCHEMA=STATE_SCHEMA,
        DBT_SEND_ANONYMOUS_USAGE_STATS="false",
    )
    return env


def _run_dbt(args: list[str], project: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = _dbt() + args + ["--project-dir", str(project), "--profiles-dir", str(project)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=project)


def _run_step(args: list[str], project: Path, env: dict[str, str], failure: str) -> None:
    """Run dbt, echo its durable model lines; on failure show its output and stop the demo."""
    done = _run_dbt(args, project, env)
    for line in _durable_lines(done.stdout):
        click.echo("   " + line)
    if done.returncode != 0:
        click.echo(done.stdout + done.stderr, err=True)
        raise click.ClickException(failure)


def _durable_lines(output: str) -> list[str]:
    return [
        line.split("  ", 1)[-1].strip()
        for line in output.splitlines()
        if "DURABLE" in line or " ERROR " in line
    ]


def _reset(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for schema in ("analytics_shop", "analytics_raw", STATE_SCHEMA):
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _progress(dsn: str) -> list[tuple[str, str, int]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            sql.SQL("SELECT flow_name, status, nodes_completed FROM {}.progress ORDER BY created_at").format(
                sql.Identifier(STATE_SCHEMA)
            )
        ).fetchall()
    return [(str(a), str(b), int(c)) for a, b, c in rows]


SEARCH = "tools for the garden"
NEAREST_DOCUMENTS = """
SELECT doc_id, title FROM (
    SELECT DISTINCT ON (e.doc_id) e.doc_id, d.title, e.embedding <=> %s::vector AS distance
    FROM analytics_shop.doc_embeddings e JOIN analytics_raw.embedding_docs d USING (doc_id)
    ORDER BY e.doc_id, distance) AS best
ORDER BY distance LIMIT 3
"""


def run_demo(dsn: str, home: Path) -> None:
    """Run the demo against ``dsn`` in a copy of the example project under ``home``, with the
    local embeddings endpoint running for the example's embedding model."""
    from dbt_durable.embed.process import LocalEndpoint

    with LocalEndpoint() as embeddings:
        _run_demo(dsn, home, embeddings.base_url)


def _run_demo(dsn: str, home: Path, embed_url: str) -> None:
    project = home.resolve() / "example_project"
    shutil.rmtree(project, ignore_errors=True)
    shutil.copytree(
        example_project_source(),
        project,
        ignore=shutil.ignore_patterns("__init__.py", "__pycache__", "target", "logs"),
    )
    _reset(dsn)
    env = _env(dsn)
    allowed = [h for h in env.get("DBT_DURABLE_HTTP_ALLOW", "").split(",") if h]
    env.update(DBT_DURABLE_EMBED_URL=embed_url, DBT_DURABLE_HTTP_ALLOW=",".join({*allowed, "127.0.0.1"}))

    click.secho("1. dbt build of example_project; it is killed (SIGKILL) inside ingest batch 3.", bold=True)
    # A model's runs are named by the relation they build (see docs/dbt.md).
    kill_at = (
        f'{KILL_AT.rsplit("@", 1)[0]}@"{env["DBT_DURABLE_PGDATABASE"]}"."analytics_shop"."orders_pipeline"'
    )
    first = _run_dbt(["build", "--threads", "1"], project, dict(env, DBT_DURABLE_FAULT=kill_at))
    if first.returncode != -signal.SIGKILL:
        click.echo(first.stdout + first.stderr, err=True)
        raise click.ClickException("the first dbt build was expected to be killed")
    for flow, status, done in _progress(dsn):
        click.echo(f"   {flow:<34} {status:<9} {done} node(s) checkpointed")

    click.secho("2. The same dbt build again: every model resumes from its checkpoints.", bold=True)
    _run_step(["build", "--threads", "1"], project, env, "the resumed dbt build failed")

    click.secho("3. refund_approval is parked on a signal; approve it and run the model again.", bold=True)
    signal_args = "{select: refund_approval, name: approve_refunds, payload: {approved: true, by: demo}}"
    _run_step(
        ["run-operation", "durable_signal", "--args", signal_args],
        project,
        env,
        "sending the approval signal failed",
    )
    _run_step(["run", "--select", "refund_approval"], project, env, "finishing the approval flow failed")

    click.secho("4. Results", bold=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        orders, dupes = conn.execute(
            "SELECT count(*), count(*) - count(DISTINCT order_id) FROM analytics_shop.orders_pipeline"
        ).fetchone() or (0, 0)
        staged = conn.execute("SELECT count(*) FROM analytics_shop.stg_orders").fetchone()
        stats = conn.execute(
            "SELECT orders, revenue, top_category, customers FROM analytics_shop.customer_stats"
        ).fetchone()
        refunds = conn.execute(
            "SELECT status, count(*) FROM analytics_shop.refund_approval GROUP BY 1 ORDER BY 1"
        ).fetchall()
        query = httpx.post(f"{embed_url}/embeddings", json={"input": SEARCH}, timeout=30).json()
        nearest = conn.execute(NEAREST_DOCUMENTS, (str(query["data"][0]["embedding"]),)).fetchall()
    click.echo(
        f"   staged {staged[0] if staged else 0} rows exactly once; published {orders} orders "
        f"after dedupe, {dupes} duplicates"
    )
    if stats:
        click.echo(
            f"   customer_stats: {stats[0]} orders, revenue {stats[1]}, top category {stats[2]}, "
            f"{stats[3]} customers"
        )
    click.echo("   refunds: " + ", ".join(f"{n} {s}" for s, n in refunds))
    click.echo(f"   The project copy is in {project}; state is in schema {STATE_SCHEMA}.")
    click.echo(f"Documents nearest to '{SEARCH}': " + "; ".join(f"#{d} {title}" for d, title in nearest))
