"""Planning cost: parse + graph build + validation of large flows, vs ``json.loads`` of the same tree."""

from __future__ import annotations

import gc
import hashlib
import itertools
import tracemalloc
from collections.abc import Callable
from typing import Any

from bench import flows
from bench.baselines import json_loader
from bench.result import Bench, ScenarioResult
from bench.stats import paired_ratios, timed
from dbt_durable.graph.build import build_graph, compile_flow, validate


def _peak_mb(func: Callable[[], Any]) -> float:
    """Peak bytes traced by ``tracemalloc`` while ``func`` runs (its result is kept alive till then)."""
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        value = func()
        _, peak = tracemalloc.get_traced_memory()
        del value
    finally:
        tracemalloc.stop()
    return peak / 2**20


def phases(text: str) -> dict[str, float]:
    """One timing of each step of ``compile_flow`` (tokenize is part of parse)."""
    from dbt_durable.flow.parser import parse, tokenize
    from dbt_durable.flow.printer import to_text

    out: dict[str, float] = {}
    out["tokenize_s"], _ = timed(lambda: tokenize(text))
    out["parse_s"], ast = timed(lambda: parse(text))
    out["validate_s"], _ = timed(lambda: validate(ast, text))
    out["to_text_s"], canonical = timed(lambda: to_text(ast))
    out["build_graph_s"], _ = timed(lambda: build_graph(ast))
    out["hash_s"], _ = timed(lambda: hashlib.sha256(canonical.encode()).hexdigest())
    return {k: round(v, 4) for k, v in out.items()}


def full_plan(source: str) -> Any:
    """``compile_flow`` plus its networkx graph, which the engine builds only on demand
    (explain): the issue's "parse plus graph build plus validation", all of it."""
    flow = compile_flow(source)
    _ = flow.graph
    return flow


def _one_size(b: Bench, res: ScenarioResult, label: str, n: int, reps: int, memory: bool) -> None:
    text, document = flows.planning(n)
    loads = json_loader(document)
    serial = itertools.count()

    def fresh() -> str:
        """The same flow, made unique by a comment: every compile misses any compile cache."""
        return f"{text}\n-- bench {next(serial)}"

    def plan() -> float:
        source = fresh()
        elapsed, _ = timed(lambda: full_plan(source))
        flows.clear_compile_caches()  # do not keep big graphs alive between measurements
        return elapsed

    nodes = compile_flow(fresh()).graph.number_of_nodes()
    res.params[label] = {"target_nodes": n, "graph_nodes": nodes, "flow_chars": len(text)}
    plan_key, json_key = f"{label}_plan_s", f"{label}_json_loads_s"
    for rep in range(reps):
        sides = ["plan", "json"] if rep % 2 == 0 else ["json", "plan"]
        for side in sides:
            if side == "plan":
                res.sample(plan_key, plan())
            else:
                res.sample(json_key, timed(loads)[0])
        p, j = res.stats[plan_key].values[-1], res.stats[json_key].values[-1]
        b.log(
            f"[graph] {label} ({nodes} nodes) rep {rep + 1}/{reps}: compile_flow + graph {p:.3f}s, "
            f"json.loads {j * 1000:.1f}ms, ratio {p / j:.0f}"
        )
    ratio = paired_ratios(res.stats[plan_key], res.stats[json_key])
    res.stats[f"{label}_ratio_vs_json"] = ratio
    res.metrics[f"graph_{label}_plan_s"] = res.stats[plan_key].median
    res.metrics[f"graph_{label}_plan_ratio_vs_json"] = ratio.median
    res.metrics[f"graph_{label}_nodes"] = nodes
    res.notes[f"{label}_phases_s"] = phases(fresh())
    b.log(f"[graph] {label} phases: {res.notes[f'{label}_phases_s']}")
    if memory:
        source = fresh()
        plan_mb = _peak_mb(lambda: full_plan(source))
        flows.clear_compile_caches()
        json_mb = _peak_mb(loads)
        res.metrics[f"graph_{label}_peak_mb"] = plan_mb
        res.metrics[f"graph_{label}_peak_ratio_vs_json"] = plan_mb / json_mb
        res.notes[f"{label}_json_loads_peak_mb"] = round(json_mb, 2)
        b.log(
            f"[graph] {label} peak memory (tracemalloc): compile_flow {plan_mb:.1f} MB, json.loads {json_mb:.1f} MB"
        )


def graph(b: Bench) -> ScenarioResult:
    """The "10k" and "100k" plans (sizes shrink with --quick/--tiny; the actual counts are recorded)."""
    s = b.sizes
    res = ScenarioResult("graph", params={"shape": "groups of bind ~> join(sql, seq(sql, sql), sql) ~> sql"})
    _one_size(b, res, "10k", s.graph_small_n, s.graph_reps, memory=False)
    _one_size(b, res, "100k", s.graph_large_n, s.graph_reps, memory=True)
    return res
