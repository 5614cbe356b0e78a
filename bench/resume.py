"""Resume: an N-node run with one node left, vs starting and finishing a 1-node run."""

from __future__ import annotations

from functools import partial

from bench import flows
from bench.db import connect, drop_schemas, fresh_schema
from bench.result import Bench, ScenarioResult
from bench.scenarios import expect, finished
from bench.stats import paired_ratios, timed
from dbt_durable.api import Client
from dbt_durable.config import Settings

WARM_REPS = 3


def resume(b: Bench) -> ScenarioResult:
    """Resume an N-node run with one node left, vs starting and finishing a 1-node run."""
    n = b.sizes.resume_n
    state, work = "bench_resume", "bench_resume_work"
    gate = f"{work}.gate"
    last = f"'SELECT 1/(SELECT count(*) FROM {gate})'"
    res = ScenarioResult("resume", params={"n": n, "last_node": last.strip("'")})
    fresh_schema(b.dsn, work)
    client = Client(Settings(dsn=b.dsn, schema=state))
    flow = flows.sequential(n, last)
    one = flows.TRIVIAL
    try:
        with connect(b.dsn) as conn:
            conn.execute(f"CREATE TABLE {gate} (x int)")
            if b.sizes.warmup:
                expect(finished(client.start(one)), "completed", 1)
            # Cold repetitions first (the headline: a resume in a new process, as after a crash),
            # then warm ones: the same process that ran the run to its failure resumes it, with
            # whatever it cached (a worker, or `start --wait` retried in-process).
            plan = [("cold", i) for i in range(b.sizes.reps)] + [("warm", i) for i in range(WARM_REPS)]
            for cache, rep in plan:
                suffix = "" if cache == "cold" else "_warm_cache"
                conn.execute(f"TRUNCATE {gate}")
                setup_s, started = timed(lambda: client.start(flow, wait=True))
                expect(finished(started), "failed", n)
                res.sample("setup_run_to_failure_s", setup_s)
                conn.execute(f"INSERT INTO {gate} VALUES (1)")
                sides = ["resume", "one"] if rep % 2 == 0 else ["one", "resume"]
                run_id = started.run_id
                for side in sides:
                    if cache == "cold":
                        flows.clear_compile_caches()
                    if side == "resume":
                        resume_s, outcome = timed(partial(client.resume, run_id))
                        expect(outcome, "completed", 1)
                        res.sample("resume" + suffix + "_s", resume_s)
                    else:
                        one_s, small = timed(lambda: client.start(one, wait=True))
                        expect(finished(small), "completed", 1)
                        res.sample("one_node_run" + suffix + "_s", one_s)
                r = res.stats["resume" + suffix + "_s"].values[-1]
                o = res.stats["one_node_run" + suffix + "_s"].values[-1]
                count = b.sizes.reps if cache == "cold" else WARM_REPS
                b.log(
                    f"[resume] {cache} rep {rep + 1}/{count}: resume of {n} nodes with 1 left {r:.3f}s, "
                    f"1-node run {o:.3f}s, ratio {r / o:.1f} (setup: {n} nodes to failure {setup_s:.1f}s)"
                )
        res.notes["resume_parts_s"] = resume_parts(client, flow, started.run_id)
    finally:
        drop_schemas(b.dsn, state, work)
    res.stats["ratio"] = paired_ratios(res.stats["resume_s"], res.stats["one_node_run_s"])
    res.stats["ratio_warm_cache"] = paired_ratios(
        res.stats["resume_warm_cache_s"], res.stats["one_node_run_warm_cache_s"]
    )
    res.metrics["resume_ratio"] = res.stats["ratio"].median
    res.metrics["resume_s"] = res.stats["resume_s"].median
    res.metrics["one_node_run_s"] = res.stats["one_node_run_s"].median
    res.metrics["resume_ratio_warm_cache"] = res.stats["ratio_warm_cache"].median
    return res


def resume_parts(client: Client, flow: str, run_id: str) -> dict[str, float]:
    """Single timings of the work a cold resume repeats for the nodes already done (evidence):
    loading the stored plan, and loading the run's progress as the engine does, next to what
    parsing the flow text again would cost."""
    from dbt_durable.graph.build import compile_flow, load_flow

    flows.clear_compile_caches()
    compile_s, _ = timed(lambda: compile_flow(flow))
    with connect(client.settings.dsn) as conn:
        row = conn.execute(client.q.get_run, (run_id,)).fetchone()
        assert row is not None
        flows.clear_compile_caches()
        fetch_s, plan = timed(lambda: conn.execute(client.q.load_plan_text, (run_id,)).fetchone())
        decode_s, graph = timed(lambda: load_flow(plan[0] if plan else None, row[3]))
        params = {"run_id": run_id, "all_results": False, "needed": list(graph.replay_results)}
        load_s, rows = timed(lambda: conn.execute(client.q.load_progress, params).fetchall())
    return {
        "compile_flow_with_validation_s": round(compile_s, 4),
        "plan_fetch_s": round(fetch_s, 4),
        "plan_decode_and_index_s": round(decode_s, 4),
        "load_progress_s": round(load_s, 4),
        "rows": len(rows),
    }
