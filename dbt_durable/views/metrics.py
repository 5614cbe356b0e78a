"""Prometheus metrics (text exposition format 0.0.4), computed from the state schema.

Everything is read through row-level security, so the figures cover the runs the connected
role may see. Latencies, retries and claims cover a sliding window (default one hour); they are
exposed as histograms and counters of that window, which suits dashboards and alerts on rates.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from dbt_durable.views.model import Views

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
CLAIM_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300)
WORKER_STALE_S = 30.0


def _labels(**kw: Any) -> str:
    if not kw:
        return ""
    inner = ",".join(
        f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in kw.items()
    )
    return "{" + inner + "}"


class _Doc:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, **labels: Any) -> None:
        v = int(value) if float(value).is_integer() else round(float(value), 6)
        self.lines.append(f"{name}{_labels(**labels)} {v}")

    def histogram(self, name: str, values: list[float], buckets: tuple[float, ...], **labels: Any) -> None:
        for b in buckets:
            self.sample(f"{name}_bucket", sum(1 for v in values if v <= b), **labels, le=b)
        self.sample(f"{name}_bucket", len(values), **labels, le="+Inf")
        self.sample(f"{name}_sum", sum(values), **labels)
        self.sample(f"{name}_count", len(values), **labels)


def collect(views: Views, window_s: float = 3600.0) -> dict[str, Any]:
    """The raw figures (also what ``/metrics`` renders)."""
    v = views.v
    with views.connect() as conn:
        by_status = conn.execute(v.metric_runs_by_status).fetchall()
        queue = conn.execute(v.metric_queue).fetchone()
        latency = conn.execute(v.metric_node_latency, {"window": window_s}).fetchall()
        retries = conn.execute(v.metric_retries, {"window": window_s}).fetchone()
        claims = [r[0] for r in conn.execute(v.metric_claim_latency, {"window": window_s}).fetchall()]
        workers = conn.execute(v.metric_workers).fetchall()
    assert queue is not None and retries is not None
    return {
        "runs": [(status, kind, int(n)) for status, kind, n in by_status],
        "queue": dict(zip(("pending", "waiting_due", "waiting", "orphaned", "oldest_pending_s"), queue)),
        "latency": latency,
        "retries": int(retries[0]),
        "claims": [float(c) for c in claims if c is not None],
        "workers": workers,
    }


def prometheus_text(views: Views, window_s: float = 3600.0) -> str:
    """The metrics as Prometheus text."""
    data = collect(views, window_s)
    d = _Doc()
    d.family("dbt_durable_up", "gauge", "1 when the state schema could be read.")
    d.sample("dbt_durable_up", 1)
    d.family("dbt_durable_runs", "gauge", "Runs by status and kind (visible to this role).")
    seen = set()
    for status, kind, n in sorted(data["runs"]):
        d.sample("dbt_durable_runs", n, status=status, kind=kind)
        seen.add((status, kind))
    for status in ("pending", "running", "waiting", "completed", "failed", "cancelled", "quarantined"):
        if (status, "flow") not in seen:
            d.sample("dbt_durable_runs", 0, status=status, kind="flow")
    q = data["queue"]
    d.family("dbt_durable_queue_depth", "gauge", "Runs a worker could take now, by reason.")
    d.sample("dbt_durable_queue_depth", q["pending"] or 0, reason="pending")
    d.sample("dbt_durable_queue_depth", q["waiting_due"] or 0, reason="timer_due")
    d.sample("dbt_durable_queue_depth", q["orphaned"] or 0, reason="lease_expired")
    d.family("dbt_durable_runs_parked", "gauge", "Runs parked waiting (timers, schedules, signals).")
    d.sample("dbt_durable_runs_parked", q["waiting"] or 0)
    d.family("dbt_durable_oldest_pending_seconds", "gauge", "Age of the oldest queued run.")
    d.sample("dbt_durable_oldest_pending_seconds", q["oldest_pending_s"] or 0)
    d.family(
        "dbt_durable_node_duration_seconds",
        "histogram",
        f"Node execution latency over the last {window_s:g}s.",
    )
    by_kind: dict[tuple[str, str], list[float]] = defaultdict(list)
    attempts_over = 0
    for kind, status, seconds, attempts in data["latency"]:
        by_kind[(kind, status)].append(float(seconds or 0))
        attempts_over += max(0, int(attempts or 1) - 1)
    for (kind, status), values in sorted(by_kind.items()):
        d.histogram("dbt_durable_node_duration_seconds", values, LATENCY_BUCKETS, kind=kind, status=status)
    d.family(
        "dbt_durable_node_retries", "gauge", f"Step retries (node_retry events) over the last {window_s:g}s."
    )
    d.sample("dbt_durable_node_retries", data["retries"])
    d.family(
        "dbt_durable_claim_latency_seconds",
        "histogram",
        f"From a run's creation to its first claim by a runner, over the last {window_s:g}s.",
    )
    d.histogram("dbt_durable_claim_latency_seconds", data["claims"], CLAIM_BUCKETS)
    d.family(
        "dbt_durable_worker_heartbeat_age_seconds", "gauge", "Seconds since each worker's last heartbeat."
    )
    alive = 0
    for worker_id, hostname, age in data["workers"]:
        d.sample("dbt_durable_worker_heartbeat_age_seconds", age or 0, worker=worker_id, host=hostname)
        alive += 1 if (age or 0) < WORKER_STALE_S else 0
    d.family(
        "dbt_durable_workers_alive", "gauge", f"Workers with a heartbeat in the last {WORKER_STALE_S:g}s."
    )
    d.sample("dbt_durable_workers_alive", alive)
    return "\n".join(d.lines) + "\n"
