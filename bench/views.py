"""Views at scale: ``status RUN_ID`` and ``explain RUN_ID`` of a run with a million node
executions (loop iterations), which must answer in under a second (issue 13). The executions
are written directly (as the state owner) in one INSERT ... SELECT, so the scenario measures
the reads, not a million checkpoints."""

from __future__ import annotations

import secrets
import time

import psycopg
from psycopg import sql

from bench.result import Bench, ScenarioResult
from dbt_durable.api import Client
from dbt_durable.config import Settings
from dbt_durable.graph.explain import picture
from dbt_durable.views.model import Views

FLOW = "'SELECT 0' ~> loop('SELECT 1' ~> 'SELECT 2', 'SELECT true') ~> 'SELECT 3'"
LOOP_STEPS = ("0.1.0.0", "0.1.0.1", "0.1.1")
METRICS = ["views_status_1m_s", "views_explain_1m_s", "views_list_1m_s"]
EXECUTIONS = {"full": 1_000_000, "quick": 200_000, "tiny": 20_000}


def views_at_scale(b: Bench) -> ScenarioResult:
    res = ScenarioResult("views")
    executions = EXECUTIONS.get(b.sizes.mode, 1_000_000)
    iterations = executions // len(LOOP_STEPS)
    res.params = {"executions": iterations * len(LOOP_STEPS) + 1, "iterations": iterations}
    schema = f"bench_views_{secrets.token_hex(3)}"
    settings = Settings(dsn=b.dsn, schema=schema)
    try:
        run_id = Client(settings).start(FLOW, wait=False).run_id
        with psycopg.connect(b.dsn, autocommit=True) as conn:
            s = sql.Identifier(schema)
            conn.execute(
                sql.SQL(
                    "INSERT INTO {}.nodes (run_id, exec_key, node_id, kind, status, attempts, result, started_at, finished_at)"
                    " SELECT %(run)s::uuid, '0.0', '0.0', 'sql', 'completed', 1, NULL::jsonb, now(), now()"
                    " UNION ALL SELECT %(run)s::uuid, n.id || '#' || i, n.id, 'sql', 'completed', 1, NULL,"
                    "   now() + i * interval '1 ms', now() + i * interval '1 ms'"
                    "   FROM generate_series(0, %(iters)s - 1) AS i, unnest(%(steps)s::text[]) AS n(id)"
                ).format(s),
                {"run": run_id, "iters": iterations, "steps": list(LOOP_STEPS)},
            )
            conn.execute(
                sql.SQL("UPDATE {}.runs SET status = 'running', started_at = now() WHERE run_id = %s").format(
                    s
                ),
                (run_id,),
            )
            conn.execute(sql.SQL("ANALYZE {}.nodes").format(s))
        b.log(f"[views] {res.params['executions']} executions written")
        views = Views(settings)
        for _ in range(3):
            t0 = time.perf_counter()
            view = views.run_view(run_id)
            res.sample("status_s", time.perf_counter() - t0)
            t0 = time.perf_counter()
            view = views.run_view(run_id)
            assert view.flow is not None
            picture(view.flow, "svg", view.states)
            res.sample("explain_s", time.perf_counter() - t0)
            t0 = time.perf_counter()
            views.list_runs(20)
            res.sample("list_s", time.perf_counter() - t0)
        assert view.states["0.1"].iterations == iterations
        res.metrics["views_status_1m_s"] = round(res.stats["status_s"].median, 4)
        res.metrics["views_explain_1m_s"] = round(res.stats["explain_s"].median, 4)
        res.metrics["views_list_1m_s"] = round(res.stats["list_s"].median, 4)
        res.notes["target"] = "under 1 s each at 1,000,000 executions"
    finally:
        with psycopg.connect(b.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    return res
