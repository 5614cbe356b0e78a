"""Runners that stop with a run: a frozen one is taken over once its lease expires (its
backends terminated first, so its step never commits twice), and a run that keeps killing its
runners is quarantined instead of crashing them forever, yet still resumes when asked."""

from __future__ import annotations

import signal
import time

from tests.security.conftest import Tenants, runner, wait_for

LEASE_S = 2.0


def frozen_takeover(t: Tenants, *second_args: str) -> None:
    """A runner freezes (SIGSTOP) inside a slow step; past its lease a second runner
    (``second_args``: worker, or resume) must take over, terminating the frozen one's backends;
    then the first one thaws. Each step's effect must exist once, and the run complete."""
    t.query("a", "CREATE SEQUENCE {a}.tries")
    a = t.client("a")
    run_id = a.start(
        t.flow(
            "'INSERT INTO {a}.seen(label) VALUES (''slow''); "
            "SELECT pg_sleep(CASE WHEN nextval(''{a}.tries'') = 1 THEN 20 ELSE 0 END)' ~> "
            "'INSERT INTO {a}.seen(label) VALUES (''done'')'"
        ),
        wait=False,
    ).run_id
    first = runner(t, "a", LEASE_S, "resume", run_id)

    def frozen_backends() -> set[int]:
        rows = t.admin(
            "SELECT pid FROM pg_stat_activity WHERE usename = %s AND application_name LIKE 'dbt_durable:%%'",
            (t.role("a"),),
        )
        return {int(pid) for (pid,) in rows}

    wait_for(
        lambda: bool(
            t.admin(
                "SELECT 1 FROM pg_stat_activity WHERE usename = %s AND state = 'active' AND query LIKE '%%pg_sleep(CASE%%'",
                (t.role("a"),),
            )
        ),
        what="the slow step",
    )
    first.popen.send_signal(signal.SIGSTOP)
    try:
        stopped = frozen_backends()
        assert stopped
        time.sleep(LEASE_S + 0.5)
        second = runner(t, "a", LEASE_S, *[run_id if x == "{run_id}" else x for x in second_args])
        assert second.wait(40) == 0, second.output()
        assert t.status(run_id) == "completed", (t.run_row(run_id), second.output())
        # The frozen runner's sessions were terminated before its step was run again.
        assert not stopped & frozen_backends(), t.admin(
            "SELECT pid, application_name, state, query FROM pg_stat_activity WHERE usename = %s",
            (t.role("a"),),
        )
    finally:
        first.popen.send_signal(signal.SIGCONT)
    first.wait(40)
    assert t.status(run_id) == "completed"
    assert sorted(label for (label,) in t.admin("SELECT label FROM {a}.seen")) == ["done", "slow"]
    claims = t.admin(
        "SELECT count(*) FROM {state}.events WHERE run_id = %s AND kind = 'run_claimed'", (run_id,)
    )
    assert claims == [(2,)]


def test_a_frozen_runner_is_taken_over_by_a_resume_after_its_lease(tenants: Tenants) -> None:
    frozen_takeover(tenants, "resume", "{run_id}")


def test_a_frozen_runner_is_taken_over_by_a_worker_after_its_lease(tenants: Tenants) -> None:
    frozen_takeover(tenants, "worker")


def test_a_run_that_keeps_killing_its_runners_is_quarantined_and_resumes_when_asked(tenants: Tenants) -> None:
    t = tenants
    a = t.client("a")
    run_id = a.start(
        t.flow(
            "'INSERT INTO {a}.seen(label) VALUES (''first'')' ~> 'INSERT INTO {a}.seen(label) VALUES (''second'')'"
        ),
        name="deadly",
        wait=False,
    ).run_id
    kills = 0
    ttl = 0.5
    deadline = time.monotonic() + 60
    while t.status(run_id) != "quarantined" and time.monotonic() < deadline:
        proc = runner(t, "a", ttl, "worker", fault="before_step@0.1@deadly")
        code = proc.wait(30)
        if code == -signal.SIGKILL:
            kills += 1
        else:
            assert code == 0, proc.output()
        time.sleep(ttl + 0.1)  # the dead runner's lease expires; the next worker claims the run
        assert kills <= 12
    row = t.run_row(run_id)
    assert row["status"] == "quarantined"
    assert kills == 9  # the first runner, then 8 takeovers from dead runners
    assert row["crash_claims"] == 8
    # Quarantined runs are left alone by workers ...
    assert runner(t, "a", ttl, "worker").wait(30) == 0
    assert t.status(run_id) == "quarantined"
    # ... and an explicit resume still runs it to the end; the first step committed once.
    assert a.resume(run_id).status == "completed"
    assert sorted(label for (label,) in t.admin("SELECT label FROM {a}.seen")) == ["first", "second"]
