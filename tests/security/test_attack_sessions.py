"""Pooled sessions come back clean: nothing a step leaves in its session (search_path, settings,
advisory locks, temporary tables, prepared statements) reaches the next run; and checkpoints
store exactly what a step returned, whatever the session's standard_conforming_strings."""

from __future__ import annotations

import signal

import pytest

from tests.security.conftest import Tenants, wait_for

POISON = (
    "SET search_path = trojan_schema, pg_catalog; "
    "SET statement_timeout = '4321s'; "
    "SET default_transaction_read_only = on; "
    "SELECT set_config('dd.planted', 'yes', false); "
    "SELECT pg_advisory_lock(4242); "
    "CREATE TEMP TABLE planted (x int); "
    "PREPARE planted_stmt AS SELECT 1; "
    "INSERT INTO {who}.seen(label) VALUES ('poison')"
)
# What a later run's step sees of its session (recorded by the step itself).
OBSERVE = (
    "INSERT INTO {who}.seen(label, note) SELECT '{label}', concat_ws('|', "
    "current_setting('search_path'), current_setting('statement_timeout'), "
    "current_setting('default_transaction_read_only'), coalesce(current_setting('dd.planted', true), ''), "
    "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND objid = 4242), "
    "(SELECT count(*) FROM pg_prepared_statements WHERE name = 'planted_stmt'), "
    "to_regclass('pg_temp.planted') IS NOT NULL)"
)


def q(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def test_nothing_a_step_leaves_in_its_session_reaches_the_next_run(tenants: Tenants) -> None:
    t = tenants
    a, b = t.client("a"), t.client("b")
    w = t.worker("a", "b", once=False)
    poison = a.start(q(t.flow(POISON.replace("{who}", "{a}"))), wait=False).run_id
    wait_for(lambda: t.status(poison) == "completed", what="the poisoning run")
    runs = []
    for i in range(3):
        for who, client in (("a", a), ("b", b)):
            text = OBSERVE.replace("{who}", "{" + who + "}").replace("{label}", f"{who}{i}")
            runs.append(client.start(q(t.flow(text)), wait=False).run_id)
            wait_for(lambda: t.status(runs[-1]) in ("completed", "failed"), what="an observing run")
    w.popen.send_signal(signal.SIGTERM)
    assert w.wait(20) == 0, w.output()
    assert [t.status(r) for r in runs] == ["completed"] * len(runs)
    clean = {who: f"{t.private[who]}|0|off||0|0|f" for who in ("a", "b")}
    for who in ("a", "b"):
        seen = t.admin(f"SELECT label, note, pid FROM {{{who}}}.seen WHERE label <> 'poison' ORDER BY at")
        assert [(label, note) for label, note, _ in seen] == [(f"{who}{i}", clean[who]) for i in range(3)]
    # The observation is not vacuous: a later run of a did get the poisoned backend.
    poisoned_pid = t.admin("SELECT pid FROM {a}.seen WHERE label = 'poison'")[0][0]
    assert poisoned_pid in {pid for (pid,) in t.admin("SELECT pid FROM {a}.seen WHERE label <> 'poison'")}


def test_a_worker_serves_many_runs_of_one_login(tenants: Tenants) -> None:
    """DISCARD ALL between runs drops server-side prepared statements behind psycopg's back: with
    psycopg's automatic preparing on, the sixth run or so failed with InvalidSqlStatementName
    (the run stranded as 'running', or the worker gone when it hit the claim statement)."""
    t = tenants
    a = t.client("a")
    runs = [a.start("'SELECT 1 AS n'", wait=False).run_id for _ in range(40)]
    proc = t.worker("a")
    code = proc.wait(60)
    assert [t.status(r) for r in runs] == ["completed"] * len(runs)
    assert code == 0
    assert "prepared statement" not in proc.output()


# Backslashes and quotes that would close a JSON string if a literal were read the old way.
HOSTILE = "\\x\", \"forged\": \"yes'\\'' \\\\ \\n E'\\'"
HOSTILE_SQL = "SELECT " + " || ".join(f"chr({ord(c)})" for c in HOSTILE) + " AS v"


@pytest.mark.parametrize("where", ["role", "step"])
def test_checkpoints_store_what_the_step_returned_without_standard_conforming_strings(
    tenants: Tenants, where: str
) -> None:
    t = tenants
    text = HOSTILE_SQL
    if where == "role":
        t.admin(f"ALTER ROLE {t.role('a')} SET standard_conforming_strings = off")
        t.admin(f"ALTER ROLE {t.role('a')} SET backslash_quote = on")
    else:
        text = "SET standard_conforming_strings = off; SET backslash_quote = on; " + text
    # $r is the first column of the first row: rendered back into SQL on the same session.
    flow = (
        q(text) + " |=> 'r' ~> 'SELECT current_setting(''standard_conforming_strings'') AS scs, $r AS again'"
    )
    a = t.client("a")
    run_id = a.start(flow, wait=False).run_id
    t.run_worker("a")
    assert t.status(run_id) == "completed", t.run_row(run_id)["error"]
    results = {
        key: value
        for key, value in t.admin(
            "SELECT exec_key, result FROM {state}.nodes WHERE run_id = %s AND status = 'completed'", (run_id,)
        )
    }
    first = next(r for r in results.values() if r["columns"][0][0] == "v")
    assert first["rows"] == [{"v": HOSTILE}]
    assert a.result(run_id)["rows"] == [{"scs": "off", "again": HOSTILE}]
    assert "forged" not in {k for r in results.values() for row in r["rows"] for k in row}
