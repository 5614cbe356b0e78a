"""The runner's per-node SQL replayed in a tight loop: what the server costs, without the runner.

Three loops of one round trip per node on one sync connection, side by side:

- ``plain``: ``BEGIN; SELECT 1; INSERT INTO <checkpoints>; COMMIT`` (the raw loop in one trip);
- ``nodes_insert``: the same, inserting into the state schema's ``nodes`` table (its columns,
  its foreign key to ``runs``);
- ``checkpoint_fn``: exactly what a lane sends per node,
  ``SELECT checkpoint_node(...); COMMIT; BEGIN; SELECT 1`` (fence + insert in PL/pgSQL).

The runner's own time per node minus ``checkpoint_fn``'s is its client-side (Python) cost.
Not a target: evidence for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from bench.baselines import SELECT_1_RESULT
from bench.db import drop_schemas, fresh_schema
from bench.result import Bench, ScenarioResult
from bench.stats import paired_ratios, timed
from dbt_durable.runner.steps import CheckpointWriter
from dbt_durable.store.migrate import migrate
from dbt_durable.store.queries import Queries

OWNER = "bench-owner"


def _loops(conn: psycopg.Connection, state: str, work: str, n: int) -> dict[str, Callable[[], None]]:
    q = Queries(state)
    result = json.dumps(SELECT_1_RESULT)
    cur = psycopg.ClientCursor(conn)
    plain = sql.SQL(
        "BEGIN; SELECT 1; INSERT INTO {} (run_id, key, result) VALUES (%s, %s, %s); COMMIT"
    ).format(sql.Identifier(work, "checkpoints"))
    nodes = sql.SQL(
        "BEGIN; SELECT 1; INSERT INTO {} (run_id, exec_key, node_id, kind, status, attempts, result, "
        "started_at, finished_at) VALUES (%s, %s, %s, 'sql', 'completed', 1, %s, %s, clock_timestamp()); COMMIT"
    ).format(sql.Identifier(state, "nodes"))

    def new_run() -> str:
        row = conn.execute(
            sql.SQL(
                "INSERT INTO {} (flow_name, flow_text, graph, graph_hash, status, lease_owner) "
                "VALUES ('bench', 'SELECT 1', '{{}}', 'x', 'running', %s) RETURNING run_id"
            ).format(sql.Identifier(state, "runs")),
            (OWNER,),
        ).fetchone()
        assert row is not None
        return str(row[0])

    def run_plain() -> None:
        run_id = uuid.uuid4()
        for i in range(n):
            cur.execute(plain, (run_id, str(i), result))

    def run_nodes() -> None:
        run_id = new_run()
        now = datetime.now(UTC)
        for i in range(n):
            cur.execute(nodes, (run_id, f"0.{i}", f"0.{i}", result, now))

    def run_checkpoint_fn() -> None:
        run_id = new_run()
        now = datetime.now(UTC)
        writer = CheckpointWriter(q.checkpoint, run_id, OWNER)  # the lane's own statements
        conn.execute("BEGIN; SELECT 1")
        for i in range(n):
            conn.execute(writer.statement(f"0.{i}", f"0.{i}", 1, result, now) + b";COMMIT;BEGIN;SELECT 1")
        conn.execute("COMMIT")

    return {"plain": run_plain, "nodes_insert": run_nodes, "checkpoint_fn": run_checkpoint_fn}


def checkpoint_sql(b: Bench) -> ScenarioResult:
    n = b.sizes.per_node_n
    res = ScenarioResult("checkpoint_sql", params={"n": n, "round_trips_per_node": 1})
    state, work = "bench_sqlcost", "bench_sqlcost_raw"
    fresh_schema(b.dsn, work)
    try:
        with psycopg.connect(b.dsn, autocommit=True) as conn:
            migrate(conn, state)
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {} (run_id uuid NOT NULL, key text NOT NULL, result jsonb, "
                    "PRIMARY KEY (run_id, key))"
                ).format(sql.Identifier(work, "checkpoints"))
            )
            loops = _loops(conn, state, work, n)
            if b.sizes.warmup:
                for loop in loops.values():
                    loop()
            names = list(loops)
            for rep in range(b.sizes.reps):
                for name in names[rep % 3 :] + names[: rep % 3]:
                    res.sample(f"{name}_s", timed(loops[name])[0])
                b.log(
                    f"[checkpoint_sql] rep {rep + 1}/{b.sizes.reps}: "
                    + ", ".join(f"{k} {res.stats[f'{k}_s'].values[-1] / n * 1e6:.0f} us/node" for k in names)
                )
    finally:
        drop_schemas(b.dsn, state, work)
    for name in ("nodes_insert", "checkpoint_fn"):
        res.stats[f"{name}_ratio_vs_plain"] = paired_ratios(res.stats[f"{name}_s"], res.stats["plain_s"])
    for name in ("plain", "nodes_insert", "checkpoint_fn"):
        res.metrics[f"sql_{name}_us"] = res.stats[f"{name}_s"].median / n * 1e6
    return res
