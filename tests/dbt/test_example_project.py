"""The example project end to end: build, SIGKILL mid-flow, re-run, exactly-once results."""

from __future__ import annotations

import signal

from tests.dbt.conftest import DbtProject

PIPELINE = "model.shop.orders_pipeline"


def flow_name(project: DbtProject, model: str) -> str:
    """A durable model's runs are keyed by the relation it builds."""
    return f'"{project.env.get("DBT_DURABLE_PGDATABASE", "postgres")}"."{project.schema}_shop"."{model}"'


SNAPSHOT = """
SELECT (SELECT count(*) FROM {shop}.stg_orders), (SELECT count(DISTINCT order_id) FROM {shop}.stg_orders),
       (SELECT count(*) FROM {shop}.orders_pipeline), (SELECT sum(amount) FROM {shop}.orders_pipeline),
       (SELECT count(*) FROM {shop}.doc_embeddings), (SELECT orders FROM {shop}.customer_stats),
       (SELECT count(*) FROM {shop}.daily_revenue)
"""
# (refund_approval is parked after one build: in shadow mode its relation appears when its run
# completes.) Uninterrupted, the example project gives exactly these (the generator is deterministic).
EXPECTED = (20000, 20000, 19394)


def test_build_parks_the_approval_and_completes_on_its_own(example: DbtProject) -> None:
    done = example.dbt("build")
    assert done.returncode == 0, done.stdout[-3000:]
    assert "parked: wait_for_signal('approve_refunds')" in done.stdout
    assert "PASS=7" in done.stdout
    snap = example.query(SNAPSHOT)[0]
    assert snap[:3] == EXPECTED
    assert snap[4] > 0  # embeddings upserted
    assert example.query(
        "SELECT status FROM {state}.runs WHERE flow_name = '" + flow_name(example, "refund_approval") + "'"
    ) == [("waiting",)]
    # Approve through the run-operation; the next run of the model finishes the flow.
    sent = example.dbt(
        "run-operation",
        "durable_signal",
        "--args",
        "{select: refund_approval, name: approve_refunds, payload: {approved: true, by: ci}}",
    )
    assert sent.returncode == 0, sent.stdout[-2000:]
    again = example.dbt("run", "--select", "refund_approval")
    assert again.returncode == 0, again.stdout[-2000:]
    assert example.query("SELECT DISTINCT status, decided_by FROM {shop}.refund_approval") == [
        ("refunded", "ci")
    ]


def test_sigkill_of_dbt_build_mid_flow_then_same_command_resumes_exactly_once(example: DbtProject) -> None:
    killed = example.dbt(
        "build", "--threads", "1", fault=f"in_step@0.5.0.0#2@{flow_name(example, 'orders_pipeline')}"
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:]
    # Two batches of 2,500 committed with their checkpoints; the third rolled back.
    assert example.query("SELECT count(*) FROM {shop}.stg_orders") == [(5000,)]
    resumed = example.dbt("build", "--threads", "1")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    line = next(x for x in resumed.stdout.splitlines() if "orders_pipeline" in x and "DURABLE" in x)
    assert "resumed run" in line and "11 skipped" in line
    snap = example.query(SNAPSHOT)[0]
    assert snap[:3] == EXPECTED  # each staged row exactly once, same final table
    per_node = example.query(
        "SELECT exec_key, count(*) FROM {state}.nodes n JOIN {state}.runs r USING (run_id) "
        f"WHERE r.flow_name = '{flow_name(example, 'orders_pipeline')}' GROUP BY r.run_id, exec_key HAVING count(*) > 1"
    )
    assert per_node == []


def test_sigkill_of_run_operation_durable_run_then_rerun(example: DbtProject) -> None:
    args = "{select: orders_pipeline}"
    killed = example.dbt(
        "run-operation",
        "durable_run",
        "--args",
        args,
        fault=f"after_commit@0.5.0.0#1@{flow_name(example, 'orders_pipeline')}",
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:]
    resumed = example.dbt("run-operation", "durable_run", "--args", args)
    assert resumed.returncode == 0, resumed.stdout[-2000:]
    assert "OK model.shop.orders_pipeline" in resumed.stdout and "resumed run" in resumed.stdout
    assert example.query("SELECT count(*), count(DISTINCT order_id) FROM {shop}.stg_orders") == [
        (20000, 20000)
    ]
    assert example.query("SELECT count(*) FROM {shop}.orders_pipeline") == [(19394,)]


def test_durable_run_orders_selected_models_as_one_dag(example: DbtProject) -> None:
    done = example.dbt("run-operation", "durable_run", "--args", "{select: 'orders_pipeline+', wait: true}")
    assert done.returncode == 0, done.stdout[-3000:]
    order = [line.split()[-1].rstrip(":") for line in done.stdout.splitlines() if " model.shop." in line]
    names = [
        x
        for x in (
            line.split(" model.shop.")[1].split(":")[0]
            for line in done.stdout.splitlines()
            if " model.shop." in line
        )
    ]
    assert names.index("orders_pipeline") < names.index("customer_stats")
    assert names.index("orders_pipeline") < names.index("refund_approval")
    assert "doc_embeddings" not in names and order


def test_parse_and_compile_have_no_side_effects(example: DbtProject) -> None:
    for command in ("parse", "compile"):
        done = example.dbt(command)
        assert done.returncode == 0, done.stdout[-2000:]
    assert (
        example.query(
            f"SELECT nspname FROM pg_namespace WHERE nspname LIKE '{example.schema}%' OR nspname = '{example.space.schema}'"
        )
        == []
    )


def test_status_and_cancel_operations(example: DbtProject) -> None:
    example.dbt("run", "--select", "refund_approval", "orders_pipeline")
    status = example.dbt("run-operation", "durable_status")
    assert status.returncode == 0
    assert "refund_approval" in status.stdout and "waiting" in status.stdout
    cancel = example.dbt(
        "run-operation", "durable_cancel", "--args", "{select: refund_approval, reason: test}"
    )
    assert cancel.returncode == 0, cancel.stdout[-2000:]
    assert example.query(
        "SELECT status FROM {state}.runs WHERE flow_name = '" + flow_name(example, "refund_approval") + "'"
    ) == [("cancelled",)]
