"""``dbt-durable demo``: a durable pipeline is killed halfway, then resumed from its checkpoint.

It generates 20,000 orders, loads them in batches through a loop, fans out three aggregates in
parallel and publishes a summary. The first attempt is SIGKILLed inside the third batch's
transaction; the second attempt skips everything already done and finishes the job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import click
import psycopg
from psycopg import sql

FLOW = """
$$CREATE TABLE IF NOT EXISTS demo_raw_orders AS
  SELECT g AS order_id, 1 + g % 500 AS customer_id,
         round((10 + (g * 7919) % 990)::numeric / 3, 2) AS amount,
         timestamp '2026-01-01' + (g % 300) * interval '1 day' AS ordered_at
  FROM generate_series(1, 20000) g$$
~> 'CREATE TABLE IF NOT EXISTS demo_orders (order_id int PRIMARY KEY, customer_id int, amount numeric, ordered_at timestamp)'
~> 'SELECT 0 AS last_id' |=> 'cursor'
~> loop(
     $$INSERT INTO demo_orders SELECT * FROM demo_raw_orders
       WHERE order_id > $cursor.last_id ORDER BY order_id LIMIT {batch_size}
       ON CONFLICT (order_id) DO NOTHING$$
     ~> $$SELECT coalesce(max(order_id), 0) AS last_id, count(*) AS loaded FROM demo_orders$$ |=> 'cursor',
     $$SELECT $cursor.loaded < 20000$$)
~> ( $$SELECT count(*) AS orders FROM demo_orders$$
   & $$SELECT round(sum(amount), 2) AS revenue FROM demo_orders$$
   & $$SELECT count(DISTINCT customer_id) AS customers FROM demo_orders$$ ) |=> 'stats'
~> $$CREATE TABLE IF NOT EXISTS demo_summary AS
     SELECT (SELECT count(*) FROM demo_orders) AS orders,
            (SELECT round(sum(amount), 2) FROM demo_orders) AS revenue, now() AS published_at$$
~> 'SELECT orders, revenue FROM demo_summary'
"""

KILL_AT = "in_step@0.3.0.0#2"  # inside the third batch's transaction


def run_demo(dsn: str, schema: str) -> None:
    """Run the demo against ``dsn``; raises SystemExit(1) if it does not end as promised."""
    key = f"demo-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in ("demo_summary", "demo_orders", "demo_raw_orders"):
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
    cmd = [
        sys.executable,
        "-m",
        "dbt_durable",
        "--dsn",
        dsn,
        "--schema",
        schema,
        "start",
        "--name",
        "demo",
        "--key",
        key,
        "--var",
        "batch_size=5000",
        "--wait",
        FLOW,
    ]
    click.secho("1. Starting the pipeline; it will be killed (SIGKILL) inside batch 3.", bold=True)
    env = dict(os.environ, DBT_DURABLE_FAULT=KILL_AT)
    first = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if first.returncode != -signal.SIGKILL:
        click.echo(first.stderr, err=True)
        raise SystemExit(1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        loaded = conn.execute("SELECT count(*) FROM demo_orders").fetchone()
    click.echo(
        f"   killed. Rows in demo_orders: {loaded[0] if loaded else 0} (batches 1-2 committed, "
        "batch 3 rolled back with its checkpoint)"
    )
    click.secho("2. Running the same command again: it resumes from the last checkpoint.", bold=True)
    env.pop("DBT_DURABLE_FAULT")
    second = subprocess.run(cmd, env=env, capture_output=True, text=True)
    click.echo("   " + second.stderr.strip().splitlines()[-1])
    if second.returncode != 0:
        click.echo(second.stderr, err=True)
        raise SystemExit(1)
    run_id = second.stdout.strip().splitlines()[-1]
    click.secho(f"3. The run's graph, with each node's status (dbt-durable explain {run_id}):", bold=True)
    explain = subprocess.run(
        [sys.executable, "-m", "dbt_durable", "--dsn", dsn, "--schema", schema, "explain", run_id],
        capture_output=True,
        text=True,
    )
    click.echo(explain.stdout)
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT orders, revenue FROM demo_summary").fetchone()
        dupes = conn.execute("SELECT count(*) - count(DISTINCT order_id) FROM demo_orders").fetchone()
    assert row is not None and dupes is not None
    click.secho(f"Done: {row[0]} orders, revenue {row[1]}, duplicate rows: {dupes[0]}.", bold=True)
    if row[0] != 20000 or dupes[0] != 0:
        raise SystemExit(1)
