"""The JSON document and the readable tables."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TextIO

from bench.result import ScenarioResult


@dataclass(frozen=True)
class Target:
    op: str  # "<=" or ">="
    goal: float
    limit: float | None = None  # beyond this the figure is a failure, not just a miss

    def met(self, value: float, bound: float) -> bool:
        return value <= bound if self.op == "<=" else value >= bound

    def verdict(self, value: float | None) -> str:
        if value is None:
            return "n/a"
        if self.met(value, self.goal):
            return "met"
        if self.limit is not None and not self.met(value, self.limit):
            return "FAILED (over limit)"
        return "MISSED"

    def describe(self) -> str:
        text = f"{self.op} {self.goal:g}"
        return text + (f" (limit {self.op} {self.limit:g})" if self.limit is not None else "")


TARGETS: dict[str, Target] = {
    "per_node_ratio_vs_raw_commit": Target("<=", 1.0, 1.5),
    "per_node_ratio_vs_dbos": Target("<=", 0.2),
    "fanout_efficiency": Target(">=", 0.75),
    "graph_10k_plan_s": Target("<=", 1.0),
    "graph_100k_plan_s": Target("<=", 10.0),
    "graph_100k_peak_mb": Target("<=", 500.0),
    "resume_ratio": Target("<=", 3.0),
    "dbt_build_overhead": Target("<=", 1.10),
    # Issue #14: many small runs at the speed of the commit floor.
    "per_node_ratio_vs_one_trip": Target("<=", 1.05),
    "worker_throughput_ratio": Target(">=", 1.0),
    "worker_statements_per_run": Target("<=", 4.0),
    "queue_ratio_vs_procrastinate": Target(">=", 3.0),
    "queue_ratio_vs_dbos": Target(">=", 3.0),
    "chaos_postgres_restart_pct": Target(">=", 100.0),
    "chaos_pg_backend_kill_pct": Target(">=", 100.0),
    "chaos_pool_exhaustion_pct": Target(">=", 100.0),
    "chaos_crash_recovery_pct": Target(">=", 100.0),
    "chaos_repeated_kills_pct": Target(">=", 100.0),
    "loop_iteration_cost_growth": Target("<=", 1.1),
}

# The keys of the JSON document's top level, in the order of the summary table.
HEADLINE = [
    "per_node_ratio_vs_raw_commit",
    "per_node_ratio_with_start_vs_raw_commit",
    "per_node_ratio_vs_one_trip",
    "per_node_runner_us",
    "per_node_raw_commit_us",
    "per_node_raw_one_trip_us",
    "per_node_runner_client_cpu_us",
    "per_node_raw_commit_client_cpu_us",
    "sql_plain_us",
    "sql_nodes_insert_us",
    "sql_checkpoint_fn_us",
    "per_node_ratio_vs_dbos",
    "per_node_ratio_resume_only_vs_dbos",
    "per_node_dbos_us",
    "fanout_efficiency",
    "fanout_efficiency_raw_baseline",
    "fanout_ratio_vs_raw_pool",
    "graph_10k_nodes",
    "graph_10k_plan_s",
    "graph_10k_plan_ratio_vs_json",
    "graph_100k_nodes",
    "graph_100k_plan_s",
    "graph_100k_plan_ratio_vs_json",
    "graph_100k_peak_mb",
    "graph_100k_peak_ratio_vs_json",
    "resume_ratio",
    "resume_s",
    "one_node_run_s",
    "resume_ratio_warm_cache",
    "dbt_build_overhead",
    "worker_throughput_ratio",
    "worker_runs_per_s",
    "worker_runs_per_s_with_start",
    "worker_raw_commits_per_s",
    "worker_claim_latency_p50_ms",
    "worker_claim_latency_p95_ms",
    "worker_statements_per_run",
    "worker_raw_statements_per_commit",
    "worker_commits_per_run",
    "worker_wal_bytes_per_run",
    "worker_raw_wal_bytes_per_commit",
    "worker_batch_statements_per_run_client_count",
    "queue_ratio_vs_procrastinate",
    "queue_ratio_vs_dbos",
    "queue_runs_per_s",
    "queue_procrastinate_jobs_per_s",
    "queue_dbos_jobs_per_s",
    "chaos_postgres_restart_pct",
    "chaos_pg_backend_kill_pct",
    "chaos_pool_exhaustion_pct",
    "chaos_crash_recovery_pct",
    "chaos_repeated_kills_pct",
    "loop_iteration_cost_growth",
    "loop_iteration_cost_growth_vs_fresh_loop",
    "loop_first_window_us_per_iteration",
    "loop_last_window_us_per_iteration",
]


def headline_keys(values: dict[str, float | None]) -> list[str]:
    """HEADLINE's keys, each followed by the measured keys that extend it, such as the per-size
    ``dbt_build_overhead_50`` after ``dbt_build_overhead``."""
    extra = [key for key in values if key not in HEADLINE]
    out: list[str] = []
    for key in HEADLINE:
        out.append(key)
        out.extend(k for k in extra if k.startswith(key + "_") and k not in out)
    return out


def metrics(results: list[ScenarioResult]) -> tuple[dict[str, float | None], dict[str, str]]:
    values: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    for res in results:
        values.update(res.metrics)
        reasons.update(res.reasons)
    return values, reasons


def document(meta: dict[str, Any], results: list[ScenarioResult]) -> dict[str, Any]:
    values, reasons = metrics(results)
    doc: dict[str, Any] = {key: values.get(key) for key in headline_keys(values)}
    doc.update({k: v for k, v in values.items() if k not in doc})
    doc["reasons"] = reasons
    doc["targets"] = {
        key: {"target": t.describe(), "value": values.get(key), "verdict": t.verdict(values.get(key))}
        for key, t in TARGETS.items()
    }
    doc["scenarios"] = {res.name: res.as_json() for res in results}
    doc["meta"] = meta
    return doc


def _fmt(value: float | None) -> str:
    if value is None:
        return "null"
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value)}"
    return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"


def _table(out: TextIO, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out.write(line.format(*header).rstrip() + "\n")
    out.write(line.format(*["-" * w for w in widths]).rstrip() + "\n")
    for row in rows:
        out.write(line.format(*row).rstrip() + "\n")


def print_scenario(out: TextIO, res: ScenarioResult) -> None:
    out.write(f"\n== {res.name} ({res.elapsed_s:.1f}s) {res.params}\n")
    if res.stats:
        rows = []
        for name, s in res.stats.items():
            summary = s.summary()
            rows.append([name, *(_fmt(summary[k]) for k in ("min", "median", "max")), str(summary["n"])])
        _table(out, ["measure", "min", "median", "max", "n"], rows)
    for key, reason in res.reasons.items():
        out.write(f"{key}: null ({reason})\n")
    out.flush()


def print_summary(out: TextIO, results: list[ScenarioResult]) -> None:
    values, reasons = metrics(results)
    rows = []
    for key in [k for k in headline_keys(values) if k in values]:
        value = values.get(key)
        target = TARGETS.get(key)
        rows.append(
            [
                key,
                _fmt(value),
                target.describe() if target else "",
                target.verdict(value) if target else "",
                reasons.get(key, ""),
            ]
        )
    out.write("\n== summary (ratios are medians of side-by-side pairs)\n")
    _table(out, ["metric", "value", "target", "verdict", "reason"], rows)
    out.flush()
