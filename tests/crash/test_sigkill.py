"""Crash tests: a real runner process is SIGKILLed at chosen points, then the same command runs
again. Every transactional step's effect must exist exactly once, and the final tables must
equal those of an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.conftest import Space, make_space

pytestmark = pytest.mark.crash

# Uses every operator; each SQL step leaves one row in `effects` (the loop one per iteration).
FLOW = """
'CREATE TABLE IF NOT EXISTS effects(step text, n int)'
~> ('INSERT INTO effects VALUES (''s1'', 1) RETURNING n' |=> 'a')
~> ('INSERT INTO effects VALUES (''j1'', $a)' & 'INSERT INTO effects VALUES (''j2'', $a)'
    & ('SELECT pg_sleep(0.05)' ~> 'INSERT INTO effects VALUES (''j3'', $a)'))
~> loop('INSERT INTO effects SELECT ''loop'', count(*) FROM effects WHERE step = ''loop'' RETURNING n' |=> 'it',
        'SELECT $it < 4')
~> ('SELECT count(*) > 0 FROM effects' ?> 'INSERT INTO effects VALUES (''then'', 0)'
                                       !> 'INSERT INTO effects VALUES (''else'', 0)')
~> ('SELECT 1 AS winner' | 'SELECT pg_sleep(20)')
~> 'INSERT INTO effects VALUES (''last'', 0)'
"""

SNAPSHOT = "SELECT step, n, count(*) FROM effects GROUP BY step, n ORDER BY step, n"


def runner(space: Space, flow: str, key: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dbt_durable",
        "--dsn",
        space.dsn,
        "--schema",
        space.schema,
        "start",
        "--name",
        "crash",
        "--key",
        key,
        "--wait",
        flow,
    ]


def run_cli(
    cmd: list[str], fault: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DBT_DURABLE_FAULT"}
    if fault:
        env["DBT_DURABLE_FAULT"] = fault
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def baseline(pg_dsn: str) -> Iterator[list[tuple[object, ...]]]:
    with make_space(pg_dsn) as space:
        done = run_cli(runner(space, FLOW, "baseline"))
        assert done.returncode == 0, done.stderr
        yield space.query(SNAPSHOT)


FAULTS = [
    "before_step@0.1.0",  # before a step
    "in_step@0.1.0",  # inside a step's transaction, SQL done, no checkpoint
    "after_commit@0.1.0",  # right after a commit
    "in_step@0.2.0.1",  # inside a join (siblings in flight); j1 & j2 & ... nests: ((j1 & j2) & ...)
    "after_commit@0.2.0.0",  # a join branch committed, others may not have
    "in_step@0.3.0.0#2",  # inside a loop iteration
    "after_commit@0.3.1#1",  # between loop iterations
    "in_step@0.4.1",  # inside a conditional branch
    "after_commit@0.5.0",  # a race was won, not yet recorded
    "before_step@0.6",  # before the last step
    "in_step@0.6",  # inside the last step
]


@pytest.mark.parametrize("fault", FAULTS)
def test_sigkill_then_rerun_applies_every_step_exactly_once(
    pg_dsn: str, baseline: list[tuple[object, ...]], fault: str
) -> None:
    with make_space(pg_dsn) as space:
        cmd = runner(space, FLOW, "k")
        killed = run_cli(cmd, fault=fault)
        assert killed.returncode == -signal.SIGKILL, f"fault {fault} never fired: {killed.stderr}"
        resumed = run_cli(cmd)
        assert resumed.returncode == 0, resumed.stderr
        assert space.query(SNAPSHOT) == baseline
        assert all(count == 1 for _, _, count in space.query(SNAPSHOT))
        # One run for the key, completed, lease released, one completed row per execution.
        runs = space.query("SELECT status, lease_owner FROM {state}.runs")
        assert runs == [("completed", None)]
        dup = space.query("SELECT exec_key FROM {state}.nodes GROUP BY run_id, exec_key HAVING count(*) > 1")
        assert dup == []
        assert "already done" in resumed.stderr


def test_kill_during_a_long_statement_terminates_the_orphan_backend(pg_dsn: str) -> None:
    """The killed runner's backend keeps running its statement; resume must end it first."""
    with make_space(pg_dsn) as space:
        space.query("CREATE TABLE effects(step text, n int)")
        space.query("CREATE SEQUENCE tries")
        flow = (
            "'INSERT INTO effects VALUES (''slow'', 1); "
            "SELECT pg_sleep(CASE WHEN nextval(''tries'') = 1 THEN 60 ELSE 0 END)' ~> "
            "'INSERT INTO effects VALUES (''after'', 1)'"
        )
        cmd = runner(space, flow, "orphan")
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not space.query(
            "SELECT 1 FROM pg_stat_activity WHERE query LIKE '%%pg_sleep(CASE%%' AND state = 'active' "
            "AND pid <> pg_backend_pid()"
        ):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        started = time.monotonic()
        resumed = run_cli(cmd)
        assert resumed.returncode == 0, resumed.stderr
        assert time.monotonic() - started < 30, "resume must not wait for the orphan's 60 s sleep"
        assert space.query("SELECT step, count(*) FROM effects GROUP BY step ORDER BY step") == [
            ("after", 1),
            ("slow", 1),
        ]
        orphans = space.query(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%%pg_sleep(CASE%%' "
            "AND pid <> pg_backend_pid()"
        )
        assert orphans == [(0,)]
