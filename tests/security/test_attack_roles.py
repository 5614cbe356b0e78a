"""A step cannot become another role: its connection logs in as its submitter, so RESET ROLE
returns to the submitter itself, and SET ROLE / set_config('role') to anyone else fail."""

from __future__ import annotations

from collections.abc import Callable

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
