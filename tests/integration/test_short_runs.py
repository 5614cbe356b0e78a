"""Short runs in one transaction (runner/batch.py): exactly once, a failing step fails only its
run, other runs go the ordinary way, and a worker killed mid-batch leaves nothing half done."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile

import pytest

from dbt_durable.flow.parser import parse
from dbt_durable.runner.batch import is_short_step
from dbt_durable.runner.worker import Worker
from tests.conftest import Space


@pytest.mark.parametrize(
    ("step", "short"),
    [
        ("SELECT 1", True),
        ("INSERT INTO t VALUES (1)", True),
        ("UPDATE t SET x = 1", True),
        ("INSERT INTO t VALUES (1) ON CONFLICT (x) DO UPDATE SET y = 2", True),
        ("SELECT 1; COMMIT", False),
        ("SET search_path = other", False),
        ("SELECT set_config('a.b', 'c', false)", False),
        ("SELECT pg_advisory_lock(1)", False),
        ("CREATE TEMP TABLE x (a int)", False),
        ("SELECT CASE WHEN true THEN 1 END", False),  # conservative: END could end a transaction
        ("SELECT $x", False),
        ("VACUUM t", False),
    ],
)
def test_only_steps_that_cannot_end_or_outlive_the_transaction_are_short(step: str, short: bool) -> None:
    ast = parse("$q$" + step + "$q$")
    assert is_short_step(ast) is short


def test_short_runs_complete_exactly_once_and_a_failing_step_fails_only_its_run(space: Space) -> None:
    space.query("CREATE TABLE effects (run_id uuid, n bigint)")
    space.query("CREATE SEQUENCE effect_seq")
    client = space.client()
    good = [
        client.start(
            "'INSERT INTO effects VALUES (''{sys_run_id}'', nextval(''effect_seq''))'", wait=False
        ).run_id
        for _ in range(40)
    ]
    broken = client.start("'SELEC broken'", wait=False).run_id
    failing = client.start("'SELECT 1 / 0'", wait=False).run_id
    ordinary = client.start(
        "'SELECT 1' ~> 'INSERT INTO effects VALUES (''{sys_run_id}'', 0)'", wait=False
    ).run_id
    stats = asyncio.run(Worker(space.settings(), runs_at_once=4, poll_s=0.2, once=True).run())
    assert stats.in_batches == 42  # the two-step run went the ordinary way
    statuses = dict(space.query("SELECT run_id::text, status FROM {state}.runs"))
    assert {statuses[r] for r in good} == {"completed"} and statuses[ordinary] == "completed"
    assert statuses[broken] == statuses[failing] == "failed"
    # Each step's SQL ran once: one row per run, and the sequence advanced once per run.
    assert space.query("SELECT count(*), count(DISTINCT run_id) FROM effects WHERE n > 0") == [(40, 40)]
    assert space.query("SELECT last_value FROM effect_seq") == [(40,)]
    # The failures name their step and the error, as the ordinary path records them.
    failed = dict(space.query("SELECT run_id::text, error FROM {state}.runs WHERE status = 'failed'"))
    assert "syntax error" in failed[broken] and "division by zero" in failed[failing]
    assert space.query(
        "SELECT count(*) FROM {state}.nodes WHERE run_id = ANY(%s::uuid[]) AND status = 'completed' AND attempts = 1",
        (good,),
    ) == [(40,)]
    # Within the statement budget of the throughput target: at most 4 statements a run.
    assert stats.batch_statements <= 4 * stats.in_batches


def test_a_worker_killed_mid_batch_leaves_every_run_pending_or_done(space: Space) -> None:
    space.query("CREATE TABLE effects (run_id uuid PRIMARY KEY)")
    client = space.client()
    runs = [
        client.start(
            "'INSERT INTO effects VALUES (''{sys_run_id}''); SELECT pg_sleep(0.05)'", wait=False
        ).run_id
        for _ in range(60)
    ]
    cmd = [sys.executable, "-m", "dbt_durable", "--dsn", space.dsn, "--schema", space.schema, "worker"]
    env = {k: v for k, v in os.environ.items() if k != "DBT_DURABLE_FAULT"}
    with tempfile.TemporaryFile("w+") as log:
        first = subprocess.Popen([*cmd, "--poll", "0.2"], env=env, stdout=log, stderr=log)
        try:
            for _ in range(200):
                if space.query("SELECT count(*) FROM {state}.runs WHERE status = 'completed'")[0][0]:
                    break
                asyncio.run(asyncio.sleep(0.05))
            first.send_signal(signal.SIGKILL)
            first.wait()
        finally:
            first.kill()
        # Nothing half done: a run is completed with its one effect, or pending with none.
        rows = space.query(
            "SELECT r.status, e.run_id IS NOT NULL FROM {state}.runs r"
            " LEFT JOIN effects e ON e.run_id = r.run_id"
        )
        assert set(rows) <= {("completed", True), ("pending", False)}
        assert ("pending", False) in rows  # the kill did land mid-drain
        second = subprocess.run(
            [*cmd, "--poll", "0.2", "--once"], env=env, stdout=log, stderr=log, timeout=120
        )
        assert second.returncode == 0
    assert space.query("SELECT status, count(*) FROM {state}.runs GROUP BY 1") == [("completed", len(runs))]
    assert space.query("SELECT count(*) FROM effects") == [(len(runs),)]


def test_a_var_that_would_end_the_transaction_sends_its_run_the_ordinary_way(space: Space) -> None:
    space.query("CREATE TABLE effects (run_id uuid, n int)")
    client = space.client()
    step = "'INSERT INTO effects VALUES (''{sys_run_id}'', {n})'"
    plain = [client.start(step, vars={"n": "1"}, wait=False).run_id for _ in range(3)]
    # {n} is text substitution: this run's text commits in the middle, so it must not share a
    # transaction with the others (it fails alone on the ordinary path, where the lane sees it).
    hostile = client.start(step, vars={"n": "2); COMMIT; SELECT (1"}, wait=False).run_id
    stats = asyncio.run(Worker(space.settings(), runs_at_once=4, poll_s=0.2, once=True).run())
    assert stats.in_batches == 3
    statuses = dict(space.query("SELECT run_id::text, status FROM {state}.runs"))
    assert {statuses[r] for r in plain} == {"completed"} and statuses[hostile] == "failed"
    # Each batched run's effect exists once, with its checkpoint.
    assert space.query("SELECT count(*), count(DISTINCT run_id) FROM effects WHERE n = 1") == [(3, 3)]
