"""A step cannot become another role: its connection logs in as its submitter, so RESET ROLE
returns to the submitter itself, and SET ROLE / set_config('role') to anyone else fail."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dbt_durable.errors import RunNotFound
from tests.security.conftest import Tenants


def q(text: str) -> str:
    """``text`` as a flow's SQL step literal."""
    return "'" + text.replace("'", "''") + "'"


def test_a_step_cannot_switch_to_another_role_on_a_worker_holding_every_login(tenants: Tenants) -> None:
    t = tenants
    a = t.client("a")
    b_role, worker_role = t.role("b"), t.role("worker")
    attempts = {
        # Returns to the login itself: allowed, and still a.
        "reset": "RESET ROLE; INSERT INTO {a}.seen(label) VALUES ('reset') RETURNING sess, cur",
        "set_role_b": f"SET ROLE {b_role}; INSERT INTO {{a}}.seen(label) VALUES ('set_role_b')",
        "set_config_worker": f"SELECT set_config('role', '{worker_role}', true); "
        "INSERT INTO {a}.seen(label) VALUES ('set_config_worker')",
        "set_session_auth": f"SET SESSION AUTHORIZATION {b_role}; "
        "INSERT INTO {a}.seen(label) VALUES ('set_session_auth')",
        "read_b": "RESET ROLE; SELECT v FROM {b}.secret",
        "write_b": "RESET ROLE; INSERT INTO {b}.secret VALUES ('forged by a')",
        "delete_b": "DELETE FROM {b}.secret",
        "read_b_after_set": f"SET ROLE {b_role}; SELECT v FROM {{b}}.secret",
    }

    def start(label: str, text: str) -> Callable[[], str]:
        then = q(t.flow(f"INSERT INTO {{a}}.seen(label) VALUES ('{label} next')"))
        return lambda: a.start(q(t.flow(text)) + " ~> " + then, name=label, wait=False).run_id

    b_flow = q(t.flow("RESET ROLE; SELECT v, session_user AS sess, current_user AS cur FROM {b}.secret"))
    own = t.client("b").start(b_flow, wait=False).run_id
    runs = t.run_in_batches({label: start(label, text) for label, text in attempts.items()}, "a", "b")

    statuses = {label: t.status(run_id) for label, run_id in runs.items()}
    assert statuses == {label: ("completed" if label == "reset" else "failed") for label in attempts}
    # b's table is exactly as b left it; nothing of it reached a's runs.
    assert t.admin("SELECT v FROM {b}.secret") == [("secret of b",)]
    dump = t.admin(
        "SELECT coalesce(string_agg(r::text, ''), '') || coalesce(string_agg(n::text, ''), '') "
        "FROM {state}.runs r LEFT JOIN {state}.nodes n USING (run_id) WHERE r.submitted_by = %s",
        (t.role("a"),),
    )
    assert "secret of b" not in str(dump[0][0])
    # Every statement that ran ran as a, logged in as a.
    seen = t.admin("SELECT label, sess, cur FROM {a}.seen ORDER BY at")
    assert seen == [("reset", t.role("a"), t.role("a")), ("reset next", t.role("a"), t.role("a"))]
    # b's own run, on the same worker, reads its own table as b.
    assert t.client("b").result(own)["rows"] == [
        {"v": "secret of b", "sess": t.role("b"), "cur": t.role("b")}
    ]


def test_a_dropped_and_recreated_role_of_the_same_name_sees_none_of_the_old_roles_runs(
    tenants: Tenants,
) -> None:
    t = tenants
    old = t.client("a")
    done = old.start("'SELECT ''old secret'' AS x'", name="same", key="k").run_id
    parked = old.start("wait_for_signal('go') ~> 'SELECT 1'", name="parked", wait=False).run_id
    queued = old.start("'SELECT 1'", name="queued", wait=False).run_id
    old.schedule_add("old_sched", "0 5 * * *", "UTC", {"kind": "flow", "flow": "'SELECT 1'"})
    old_oid = t.admin("SELECT oid FROM pg_roles WHERE rolname = %s", (t.role("a"),))[0][0]
    t.drop_role("a")
    t.create_role("a")
    assert t.admin("SELECT oid FROM pg_roles WHERE rolname = %s", (t.role("a"),))[0][0] != old_oid
    new = t.client("a")
    ids = [done, parked, queued]
    assert [r for r in new.list_runs(1000) if r["run_id"] in ids] == []
    assert new.schedules() == []
    for run_id in ids:
        with pytest.raises(RunNotFound):
            new.get_run(run_id)
        with pytest.raises(RunNotFound):
            new.signal(run_id, "go")
        with pytest.raises(RunNotFound):
            new.cancel(run_id)
        with pytest.raises(RunNotFound):
            new.resume(run_id)
    with t.connect("a") as conn:
        for table in ("runs", "nodes", "events", "signals", "schedules", "progress"):
            assert conn.execute(t.flow(f"SELECT count(*) FROM {{state}}.{table}")).fetchone() == (0,), table
    # Same flow name and key: a new run of the new role, not the old one resumed.
    again = new.start("'SELECT ''new'' AS x'", name="same", key="k")
    assert again.created and again.run_id != done
    assert new.result(again.run_id)["rows"] == [{"x": "new"}]
    # A worker holding the new login runs nothing of the old role's.
    t.run_worker("a")
    assert t.status(queued) == "pending"
    assert t.status(parked) == "pending"
