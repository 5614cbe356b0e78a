"""Workers: parked waits that survive a killed worker, signals, and many workers racing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from dbt_durable.runner.worker import Worker
from tests.conftest import Space


def worker(space: Space, *extra: str) -> subprocess.Popen[str]:
    cmd = [
        sys.executable,
        "-m",
        "dbt_durable",
        "--dsn",
        space.dsn,
        "--schema",
        space.schema,
        "worker",
        "--poll",
        "0.2",
        "--park-after",
        "0.3",
        *extra,
    ]
    env = {k: v for k, v in os.environ.items() if k != "DBT_DURABLE_FAULT"}
    # Output goes to a file: a pipe nobody reads would block a busy worker once it fills.
    log = tempfile.TemporaryFile("w+")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=log, text=True)


def wait_for(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def status_of(space: Space, run_id: str) -> str:
    return str(space.query("SELECT status FROM {state}.runs WHERE run_id = %s", (run_id,))[0][0])


def test_sleeping_run_survives_a_killed_worker_and_wakes_on_time(space: Space) -> None:
    space.query("CREATE TABLE effects(step text, at timestamptz DEFAULT clock_timestamp())")
    client = space.client()
    run_id = client.start(
        "'INSERT INTO effects(step) VALUES (''before'')' ~> sleep(2) ~> "
        "'INSERT INTO effects(step) VALUES (''after'')'",
        wait=False,
    ).run_id
    first = worker(space)
    try:
        wait_for(lambda: status_of(space, run_id) == "waiting")
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        first.kill()
    wake_at = space.query("SELECT wake_at FROM {state}.runs WHERE run_id = %s", (run_id,))[0][0]
    # Parked: no connection of any runner is held while the run sleeps.
    assert space.query(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'dbt_durable:%%'"
    ) == [(0,)]
    second = worker(space)
    try:
        wait_for(lambda: status_of(space, run_id) == "completed")
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=20)
    rows = space.query("SELECT step, at FROM effects ORDER BY at")
    assert [r[0] for r in rows] == ["before", "after"]
    assert rows[1][1] >= wake_at


def test_signal_wakes_a_parked_run_after_its_worker_died(space: Space) -> None:
    client = space.client()
    run_id = client.start(
        "wait_for_signal('approve') |=> 's' ~> 'SELECT $s.data ->> ''by'' AS by'", wait=False
    ).run_id
    first = worker(space)
    try:
        wait_for(lambda: status_of(space, run_id) == "waiting")
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        first.kill()
    sent = subprocess.run(
        [
            sys.executable,
            "-m",
            "dbt_durable",
            "--dsn",
            space.dsn,
            "--schema",
            space.schema,
            "signal",
            run_id,
            "approve",
            '{"by": "ops"}',
        ],
        capture_output=True,
        text=True,
    )
    assert sent.returncode == 0, sent.stderr
    second = worker(space)
    try:
        wait_for(lambda: status_of(space, run_id) == "completed")
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=20)
    assert client.result(run_id)["rows"] == [{"by": "ops"}]


def test_sigterm_hands_a_running_run_back_and_another_worker_finishes_it(space: Space) -> None:
    space.query("CREATE TABLE effects(step text)")
    space.query("CREATE SEQUENCE tries")
    client = space.client()
    run_id = client.start(
        "'INSERT INTO effects VALUES (''slow''); "
        "SELECT pg_sleep(CASE WHEN nextval(''tries'') = 1 THEN 30 ELSE 0 END)' ~> "
        "'INSERT INTO effects VALUES (''done'')'",
        wait=False,
    ).run_id
    first = worker(space)
    wait_for(
        lambda: bool(
            space.query(
                "SELECT 1 FROM pg_stat_activity WHERE query LIKE '%%pg_sleep(CASE%%' AND state = 'active' "
                "AND pid <> pg_backend_pid()"
            )
        )
    )
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=20) == 0
    # The interrupted step rolled back; the lease was handed back at once.
    assert space.query("SELECT count(*) FROM effects") == [(0,)]
    second = worker(space, "--once")
    assert second.wait(timeout=60) == 0
    assert status_of(space, run_id) == "completed"
    assert space.query("SELECT step, count(*) FROM effects GROUP BY 1 ORDER BY 1") == [
        ("done", 1),
        ("slow", 1),
    ]


def test_four_workers_share_hundreds_of_runs_each_node_executed_once(space: Space) -> None:
    space.query("CREATE TABLE effects(run_id uuid, step text)")
    client = space.client()
    client.migrate()
    flow = (
        "'INSERT INTO effects VALUES (''{sys_run_id}'', ''a'')' ~> "
        "('INSERT INTO effects VALUES (''{sys_run_id}'', ''b'')' & 'INSERT INTO effects VALUES (''{sys_run_id}'', ''c'')')"
    )
    runs = 240
    for i in range(runs):
        client.start(flow, name="fleet", key=f"k{i}", wait=False)
    workers = [worker(space, "--once", "--concurrency", "4") for _ in range(4)]
    for w in workers:
        assert w.wait(timeout=240) == 0
    assert space.query("SELECT status, count(*) FROM {state}.runs GROUP BY 1") == [("completed", runs)]
    assert space.query("SELECT count(*), count(DISTINCT (run_id, step)) FROM effects") == [
        (runs * 3, runs * 3)
    ]
    claimed_by = space.query(
        "SELECT count(DISTINCT detail ->> 'owner') FROM {state}.events WHERE kind = 'run_claimed'"
    )
    assert claimed_by[0][0] >= 2  # the work was actually shared


def test_a_worker_that_lost_its_listen_connection_still_wakes_by_polling(space: Space) -> None:
    client = space.client()
    client.migrate()
    w = worker(space)
    try:
        wait_for(
            lambda: bool(
                space.query(
                    "SELECT 1 FROM pg_stat_activity WHERE application_name LIKE 'dbt_durable:%%:listen'"
                )
            )
        )
        space.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name LIKE 'dbt_durable:%%:listen'"
        )
        run_id = client.start("'SELECT 42 AS answer'", wait=False).run_id  # its NOTIFY reaches nobody
        wait_for(lambda: status_of(space, run_id) == "completed", timeout=20)
    finally:
        w.send_signal(signal.SIGTERM)
        w.wait(timeout=20)
    assert client.result(run_id)["rows"] == [{"answer": 42}]


def test_worker_stats_record_each_claim_that_returned_a_run(space: Space) -> None:
    client = space.client()
    for _ in range(3):
        client.start("'SELECT 1'", wait=False)
    # The ordinary claim path (short runs would take all three in one batch).
    stats = asyncio.run(
        Worker(space.settings(), runs_at_once=1, poll_s=0.2, once=True, short_runs=False).run()
    )
    assert stats.claimed == 3 and stats.finished == {"completed": 3}
    # One run per claim; the last claim, which found nothing, is not recorded.
    assert len(stats.claim_latencies_s) == 3
    assert all(latency >= 0 for latency in stats.claim_latencies_s)
