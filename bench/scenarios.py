"""Scenarios that execute flows through the real runner, each against a baseline of the same run."""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench import flows
from bench.baselines import DbosFlow, DbosUnavailable, RawCommitLoop
from bench.db import connect, drop_schemas, fresh_schema, server_counters
from bench.result import Bench, ScenarioResult
from bench.stats import clocked, paired_ratios, timed
from dbt_durable.api import Client, Started
from dbt_durable.config import Settings
from dbt_durable.runner.engine import Outcome


@dataclass
class FlowTiming:
    resume_s: float  # client.resume(run_id): the execution proper
    total_s: float  # client.start(wait=False) + client.resume
    resume_cpu_s: float  # this process's CPU time during client.resume
    outcome: Outcome


def run_flow(client: Client, flow: str, cold: bool = True) -> FlowTiming:
    """Create a run of ``flow`` and execute it, timing the execution and the whole.

    ``cold``: first empty the engine's cache of compiled flows, so the run pays what it pays
    in a new process (``dbt-durable start --wait``), not what a long-lived worker pays.
    """
    if cold:
        flows.clear_compile_caches()
    start = time.perf_counter()
    started = client.start(flow, wait=False)
    resume_s, cpu_s, outcome = clocked(lambda: client.resume(started.run_id))
    return FlowTiming(resume_s, time.perf_counter() - start, cpu_s, outcome)


def expect(outcome: Outcome, status: str, executed: int | None = None) -> None:
    if outcome.status != status or (executed is not None and outcome.executed != executed):
        raise RuntimeError(
            f"run {outcome.run_id} ended {outcome.status} after {outcome.executed} nodes "
            f"(expected {status}{'' if executed is None else f' after {executed}'}): {outcome.error}"
        )


def _per_node(value: float, n: int) -> float:
    return value / n * 1e6


def per_node(b: Bench) -> ScenarioResult:
    """N trivial transactional nodes in sequence vs N hand-written BEGIN/SELECT/INSERT/COMMIT."""
    n = b.sizes.per_node_n
    res = ScenarioResult("per_node", params={"n": n, "flow": "'SELECT 1' ~> ... (n steps)"})
    state, work = "bench_per_node", "bench_per_node_raw"
    fresh_schema(b.dsn, work)
    client = Client(Settings(dsn=b.dsn, schema=state))
    raw = RawCommitLoop(b.dsn, work)
    flow = flows.sequential(n)
    try:
        if b.sizes.warmup:
            expect(run_flow(client, flow).outcome, "completed", n)
            raw.run(n)
            raw.run_one_trip(n)
        with connect(b.dsn) as probe:
            for rep in range(b.sizes.reps):
                sides = ["runner", "raw", "raw_one_trip"]
                sides = sides[rep % 3 :] + sides[: rep % 3]  # rotate, so no side always goes first
                for side in sides:
                    before = server_counters(probe)
                    if side == "runner":
                        t = run_flow(client, flow)
                        expect(t.outcome, "completed", n)
                        res.sample("runner_resume_s", t.resume_s)
                        res.sample("runner_with_start_s", t.total_s)
                        res.sample("runner_client_cpu_s", t.resume_cpu_s)
                    elif side == "raw":
                        raw_s, cpu_s, _ = clocked(lambda: raw.run(n))
                        raw.flush_stats()
                        res.sample("raw_commit_s", raw_s)
                        res.sample("raw_commit_client_cpu_s", cpu_s)
                    else:
                        one_s, _ = timed(lambda: raw.run_one_trip(n))
                        raw.flush_stats()
                        res.sample("raw_commit_one_trip_s", one_s)
                    after = server_counters(probe)
                    res.notes[f"{side}_server_work_per_node"] = {
                        k: round((after[k] - before[k]) / n, 2) for k in after
                    }
                r, w = res.stats["runner_resume_s"].values[-1], res.stats["raw_commit_s"].values[-1]
                o = res.stats["raw_commit_one_trip_s"].values[-1]
                b.log(
                    f"[per_node] rep {rep + 1}/{b.sizes.reps}: runner {r:.3f}s "
                    f"({_per_node(r, n):.0f} us/node), raw commit {w:.3f}s "
                    f"({_per_node(w, n):.0f} us/node), ratio {r / w:.2f}; "
                    f"raw in one round trip {_per_node(o, n):.0f} us/node, ratio {r / o:.2f}"
                )
    finally:
        raw.close()
        drop_schemas(b.dsn, state, work)
    res.stats["ratio_resume_vs_raw"] = paired_ratios(res.stats["runner_resume_s"], res.stats["raw_commit_s"])
    res.stats["ratio_with_start_vs_raw"] = paired_ratios(
        res.stats["runner_with_start_s"], res.stats["raw_commit_s"]
    )
    res.stats["ratio_resume_vs_one_trip"] = paired_ratios(
        res.stats["runner_resume_s"], res.stats["raw_commit_one_trip_s"]
    )
    res.metrics["per_node_ratio_vs_one_trip"] = res.stats["ratio_resume_vs_one_trip"].median
    res.metrics["per_node_ratio_vs_raw_commit"] = res.stats["ratio_resume_vs_raw"].median
    res.metrics["per_node_ratio_with_start_vs_raw_commit"] = res.stats["ratio_with_start_vs_raw"].median
    res.metrics["per_node_runner_us"] = _per_node(res.stats["runner_resume_s"].median, n)
    res.metrics["per_node_raw_commit_us"] = _per_node(res.stats["raw_commit_s"].median, n)
    res.metrics["per_node_raw_one_trip_us"] = _per_node(res.stats["raw_commit_one_trip_s"].median, n)
    res.metrics["per_node_runner_client_cpu_us"] = _per_node(res.stats["runner_client_cpu_s"].median, n)
    res.metrics["per_node_raw_commit_client_cpu_us"] = _per_node(
        res.stats["raw_commit_client_cpu_s"].median, n
    )
    return res


DBOS_METRICS = ["per_node_ratio_vs_dbos", "per_node_ratio_resume_only_vs_dbos", "per_node_dbos_us"]


def dbos(b: Bench) -> ScenarioResult:
    """The same sequential flow vs one DBOS workflow of N ``@DBOS.step`` s doing ``SELECT 1``."""
    n = b.sizes.dbos_n
    res = ScenarioResult("dbos", params={"n": n, "dbos_system_database": "bench_dbos_sys (same server)"})
    try:
        other = DbosFlow(b.dsn, "bench_dbos_sys")
    except DbosUnavailable as exc:
        res.skip(DBOS_METRICS, str(exc))
        b.log(f"[dbos] skipped: {exc}")
        return res
    state = "bench_dbos_runner"
    client = Client(Settings(dsn=b.dsn, schema=state))
    flow = flows.sequential(n)
    try:
        if b.sizes.warmup:
            expect(run_flow(client, flow).outcome, "completed", n)
            other.run(n)
        for rep in range(b.sizes.reps):
            sides = ["runner", "dbos"] if rep % 2 == 0 else ["dbos", "runner"]
            for side in sides:
                if side == "runner":
                    t = run_flow(client, flow)
                    expect(t.outcome, "completed", n)
                    res.sample("runner_resume_s", t.resume_s)
                    res.sample("runner_with_start_s", t.total_s)
                else:
                    dbos_s, _ = timed(lambda: other.run(n))
                    res.sample("dbos_workflow_s", dbos_s)
            r, d = res.stats["runner_with_start_s"].values[-1], res.stats["dbos_workflow_s"].values[-1]
            b.log(
                f"[dbos] rep {rep + 1}/{b.sizes.reps}: runner (with start) {r:.3f}s, "
                f"DBOS {d:.3f}s ({_per_node(d, n):.0f} us/step), ratio {r / d:.3f}"
            )
    finally:
        other.close()
        drop_schemas(b.dsn, state)
    # A DBOS workflow call creates its workflow too, so the headline includes the runner's start.
    res.stats["ratio_with_start_vs_dbos"] = paired_ratios(
        res.stats["runner_with_start_s"], res.stats["dbos_workflow_s"]
    )
    res.stats["ratio_resume_vs_dbos"] = paired_ratios(
        res.stats["runner_resume_s"], res.stats["dbos_workflow_s"]
    )
    res.metrics["per_node_ratio_vs_dbos"] = res.stats["ratio_with_start_vs_dbos"].median
    res.metrics["per_node_ratio_resume_only_vs_dbos"] = res.stats["ratio_resume_vs_dbos"].median
    res.metrics["per_node_dbos_us"] = _per_node(res.stats["dbos_workflow_s"].median, n)
    return res


def finished(started: Started) -> Outcome:
    """The outcome of ``client.start(..., wait=True)``."""
    if started.outcome is None:
        raise RuntimeError(f"run {started.run_id} was not executed")
    return started.outcome
