"""Durable dbt builds: a build SIGKILLed at model k resumes at model k."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from tests.dbt.conftest import DbtProject, write_model

PIPELINE = "model.shop.orders_pipeline"


def durable(project: DbtProject, *args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(project.env, DBT_DURABLE_FAULT=fault) if fault else project.env
    cmd = [
        sys.executable,
        "-m",
        "dbt_durable",
        "--project-dir",
        str(project.path),
        "--profiles-dir",
        str(project.path),
        *args,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=project.path, timeout=300)


def test_build_killed_after_a_model_resumes_after_it(example: DbtProject) -> None:
    select = ["--select", "orders_pipeline+", "--exclude", "refund_approval"]
    killed = durable(example, "build", *select, fault="after_commit@model.shop.orders_pipeline")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    # The adapter wrote run_results.json as nodes finished (dbt writes it only at the end).
    results = json.loads((example.path / "target" / "run_results.json").read_text())["results"]
    assert {r["unique_id"]: r["status"] for r in results}[PIPELINE] == "success"
    resumed = durable(example, "build", "--resume", *select)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "1 skipped from earlier attempts" in resumed.stderr
    # orders_pipeline was built once: its durable flow has exactly one run.
    assert example.query(
        "SELECT count(*) FROM {state}.runs WHERE flow_name LIKE '%%.\"orders_pipeline\"'"
    ) == [(1,)]
    built = {
        r[0]
        for r in example.query(
            "SELECT exec_key FROM {state}.nodes n JOIN {state}.runs r USING (run_id) WHERE r.kind = 'dbt_build'"
        )
    }
    assert {"model.shop.orders_pipeline", "model.shop.customer_stats", "model.shop.daily_revenue"} <= built
    assert example.query("SELECT count(*) FROM {shop}.customer_stats") == [(1,)]


def test_resume_with_other_arguments_or_nothing_to_resume_is_refused(example: DbtProject) -> None:
    nothing = durable(example, "build", "--resume", "--select", "daily_revenue")
    assert nothing.returncode == 2 and "no unfinished durable build" in nothing.stderr


def test_a_build_that_fails_before_any_node_says_why(tiny: DbtProject) -> None:
    write_model(tiny, "fine", "select 1 as x")
    write_model(tiny, "broken", "select * from {{ ref('no_such_model') }}")
    out = durable(tiny, "build")
    assert out.returncode != 0
    assert "no_such_model" in out.stderr, out.stderr[-2000:]  # dbt's own compilation error
