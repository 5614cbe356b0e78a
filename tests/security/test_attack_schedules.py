"""Schedules belong to their owner: another role cannot see, pause, remove or retarget them (a
same-named schedule of its own is a different schedule), their runs execute as the owner, and
a schedule that cannot fire is paused with its error without stopping the worker."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from dbt_durable.errors import ConfigError
from tests.security.conftest import Tenants, later, serve


def test_a_cannot_see_pause_remove_or_retarget_b_schedule_and_runs_execute_as_their_owner(
    tenants: Tenants,
) -> None:
    t = tenants
    a, b = t.client("a"), t.client("b")
    b_flow = t.flow("'INSERT INTO {b}.seen(label) VALUES (''b schedule'')'")
    assert b.schedule_add("nightly", "* * * * *", "UTC", {"kind": "flow", "flow": b_flow})
    before = t.admin("SELECT owner_oid, name, cron, target, paused, last_error FROM {state}.schedules")
    assert a.schedules() == []
    with pytest.raises(ConfigError):
        a.schedule_pause("nightly", True)
    with pytest.raises(ConfigError):
        a.schedule_remove("nightly")
    with t.connect("a") as conn:
        for text in (
            "SELECT {state}.pause_schedule('nightly', true)",
            "SELECT {state}.remove_schedule('nightly')",
            "SELECT {state}.schedule_fired('nightly', now() + interval '1 day', 'broken by a')",
        ):
            conn.execute(t.flow(text))
        locked = conn.execute(t.flow("SELECT name FROM {state}.lock_schedules()")).fetchall()
        assert locked == []
    # a's "retarget" creates a's own schedule of the same name, which runs as a.
    a_flow = t.flow(
        "'INSERT INTO {a}.seen(label) VALUES (''a schedule'')' ~> 'INSERT INTO {b}.secret VALUES (''forged'')'"
    )
    assert a.schedule_add("nightly", "* * * * *", "UTC", {"kind": "flow", "flow": a_flow})
    assert (
        t.admin(
            "SELECT owner_oid, name, cron, target, paused, last_error FROM {state}.schedules "
            "WHERE owner_oid = (SELECT oid FROM pg_roles WHERE rolname = %s)",
            (t.role("b"),),
        )
        == before
    )
    assert [s["name"] for s in b.schedules()] == ["nightly"]
    assert b.schedules()[0]["target"]["flow"] == b_flow
    # One minute later, each schedule fires its own run, submitted by and executed as its owner.
    serve(t, "worker", "a", "b", clock=later(61))
    fired = t.admin(
        "SELECT submitted_by, status FROM {state}.runs WHERE flow_name = 'schedule:nightly' ORDER BY 1"
    )
    assert sorted(fired) == sorted([(t.role("a"), "failed"), (t.role("b"), "completed")])
    assert t.admin("SELECT label, sess, cur FROM {b}.seen") == [("b schedule", t.role("b"), t.role("b"))]
    assert t.admin("SELECT label, sess FROM {a}.seen") == [("a schedule", t.role("a"))]
    assert t.admin("SELECT v FROM {b}.secret") == [("secret of b",)]


BAD_SCHEDULES: list[tuple[str, str, str, Any]] = [
    ("bad_cron", "not a cron", "UTC", {"kind": "flow", "flow": "'SELECT 1'"}),
    ("bad_tz", "* * * * *", "Mars/Olympus_Mons", {"kind": "flow", "flow": "'SELECT 1'"}),
    ("bad_flow", "* * * * *", "UTC", {"kind": "flow", "flow": "'unterminated ~> "}),
    ("no_flow", "* * * * *", "UTC", {"kind": "flow"}),
    ("not_an_object", "* * * * *", "UTC", "just a string"),
    ("never", "0 0 30 2 *", "UTC", {"kind": "flow", "flow": "'SELECT 1'"}),
]
# Fires (its cron is fine), but the build it queues fails at once: no dbt project is served.
BAD_BUILD = ("bad_build", "* * * * *", "UTC", {"kind": "dbt_build", "args": "--select x", "project_dir": "/"})


def test_bad_schedule_rows_are_paused_with_their_error_and_never_stop_the_worker(tenants: Tenants) -> None:
    t = tenants
    with t.connect("a") as conn:
        for name, cron, tz, target in [*BAD_SCHEDULES, BAD_BUILD]:  # saved directly: no client-side check
            conn.execute(
                t.flow("SELECT {state}.save_schedule(%s, %s, %s, %s, 'latest', 10, 'skip')"),
                (name, cron, tz, Jsonb(target)),
            )
        with pytest.raises(psycopg.Error):  # not even stored: the column is NOT NULL
            conn.execute(
                t.flow(
                    "SELECT {state}.save_schedule('null_target', '* * * * *', 'UTC', NULL, 'latest', 10, 'skip')"
                )
            )
    t.client("a").schedule_add(
        "good",
        "* * * * *",
        "UTC",
        {"kind": "flow", "flow": t.flow("'INSERT INTO {a}.seen(label) VALUES (''good schedule'')'")},
    )
    good_a = (
        t.client("a").start(t.flow("'INSERT INTO {a}.seen(label) VALUES (''good run'')'"), wait=False).run_id
    )
    good_b = (
        t.client("b").start(t.flow("'INSERT INTO {b}.seen(label) VALUES (''b run'')'"), wait=False).run_id
    )
    serve(t, "worker", "a", "b", clock=later(61))
    assert t.status(good_a) == "completed"
    assert t.status(good_b) == "completed"
    assert sorted(r[0] for r in t.admin("SELECT label FROM {a}.seen")) == ["good run", "good schedule"]
    rows = {
        name: (paused, error)
        for name, paused, error in t.admin("SELECT name, paused, last_error FROM {state}.schedules")
    }
    assert rows.pop("good") == (False, None)
    assert rows.pop("bad_build") == (False, None)
    assert t.admin("SELECT status FROM {state}.runs WHERE flow_name = 'schedule:bad_build'") == [("failed",)]
    assert set(rows) == {name for name, *_ in BAD_SCHEDULES}
    assert all(paused and error for paused, error in rows.values()), rows
    # The worker keeps serving afterwards: a run queued after the bad rows still completes.
    later_run = t.client("a").start("'SELECT 2 AS n'", wait=False).run_id
    t.run_worker("a", "b")
    assert t.client("a").result(later_run)["rows"] == [{"n": 2}]
