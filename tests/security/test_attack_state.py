"""The state cannot be written around the runtime's functions, and the functions act only on
the caller's own runs: another role's run cannot be completed, failed, taken, cancelled or
signalled, nothing of it can be read, and no forged row reaches other logins' sessions."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from dbt_durable.api import Client
from dbt_durable.config import Settings
from dbt_durable.errors import RunNotFound
from dbt_durable.graph.build import compile_flow
from dbt_durable.store import migrate as migrate_module
from dbt_durable.store.runs import new_run_params
from tests.security.conftest import Tenants, wait_for

FORGED_OWNER = "0123456789abcdef"


def refused_or_noop(conn: psycopg.Connection[Any], text: str, params: tuple[Any, ...] = ()) -> str:
    """Run ``text``; ``"refused:<SQLSTATE>"`` if the server raised, else what it returned (as text)."""
    try:
        cur = conn.execute(text, params or None)
        return repr(cur.fetchall() if cur.description else None)
    except psycopg.Error as exc:
        return f"refused:{exc.sqlstate}"


def snapshot(t: Tenants, run_id: str) -> list[Any]:
    """Everything stored about ``run_id`` (read as the superuser)."""
    return [
        t.admin(
            "SELECT status, lease_owner, lease_expires_at, result, error, failed_node, waiting_for, "
            "cancel_requested, crash_claims, updated_at, run_key FROM {state}.runs WHERE run_id = %s",
            (run_id,),
        ),
        t.admin("SELECT * FROM {state}.nodes WHERE run_id = %s ORDER BY exec_key", (run_id,)),
        t.admin("SELECT * FROM {state}.events WHERE run_id = %s ORDER BY 1", (run_id,)),
        t.admin("SELECT * FROM {state}.signals WHERE run_id = %s ORDER BY 1", (run_id,)),
    ]


def test_another_roles_parked_run_cannot_be_completed_taken_or_steered(tenants: Tenants) -> None:
    t = tenants
    b = t.client("b")
    b.schedule_add("nightly", "0 3 * * *", "UTC", {"kind": "flow", "flow": "'SELECT 1'"})
    run_id = b.start(
        "wait_for_signal('go') |=> 's' ~> "
        + t.flow("'INSERT INTO {b}.seen(label, note) VALUES (''after signal'', $s.data ->> ''by'')'"),
        wait=False,
    ).run_id
    t.run_worker("b")
    assert t.status(run_id) == "waiting"
    before = snapshot(t, run_id)
    tables_before = t.admin(
        "SELECT (SELECT count(*) FROM {state}.runs), (SELECT count(*) FROM {state}.nodes), "
        "(SELECT count(*) FROM {state}.events), (SELECT count(*) FROM {state}.signals), "
        "(SELECT count(*) FROM {state}.schedules), (SELECT count(*) FROM {state}.schema_version)"
    )
    s = sql.Identifier(t.schema).as_string(None)
    calls = [
        f"SELECT {s}.checkpoint_node(%s, %s, '0.1', '0.1', 'sql', 1, '{{\"rows\": []}}', now())",
        f"SELECT {s}.mark_node(%s, %s, '0.1', '0.1', 'sql', 'failed', 1, 'forged', NULL)",
        f"SELECT {s}.finish_run(%s, %s, 'completed', '{{\"forged\": true}}', NULL, NULL, NULL, NULL)",
        f"SELECT * FROM {s}.take_run(%s, %s, 60, true, 8)",
        f"SELECT * FROM {s}.renew_lease(%s, %s, 60)",
        f"SELECT {s}.release_lease(%s, %s)",
        f"SELECT * FROM {s}.consume_signal(%s, %s, 'go', '0.0')",
        f"SELECT {s}.retire_run(%s, %s::text = '')",
        f"SELECT {s}.record_event(%s, 'forged:' || %s, '{{}}')",
        f"SELECT {s}.cancel(%s, 'by a ' || %s)",
        f"SELECT {s}.signal(%s, 'go', jsonb_build_object('by', 'a', 'owner', %s::text))",
        f"SELECT {s}.signal(%s, 'other', jsonb_build_object('by', 'a', 'owner', %s::text))",
        f"SELECT * FROM {s}.own_run(%s) WHERE %s::text IS NOT NULL",
        f"SELECT * FROM {s}.visible_run(%s) WHERE %s::text IS NOT NULL",
        f"SELECT {s}.fence(%s, %s)",
        f"UPDATE {s}.runs SET status = 'completed' WHERE run_id = %s AND %s::text IS NOT NULL",
        f"DELETE FROM {s}.runs WHERE run_id = %s AND %s::text IS NOT NULL",
        f"INSERT INTO {s}.nodes (run_id, exec_key, node_id, kind, status) VALUES (%s, %s, '0.1', 'sql', 'completed')",
        f"UPDATE {s}.nodes SET status = 'completed' WHERE run_id = %s AND %s::text IS NOT NULL",
        f"INSERT INTO {s}.signals (run_id, name, payload) VALUES (%s, 'go', jsonb_build_object('o', %s::text))",
        f"DELETE FROM {s}.signals WHERE run_id = %s AND %s::text IS NOT NULL",
        f"INSERT INTO {s}.events (run_id, kind, detail) VALUES (%s, 'run_completed', jsonb_build_object('o', %s::text))",
        f"DELETE FROM {s}.events WHERE run_id = %s AND %s::text IS NOT NULL",
    ]
    owners = [FORGED_OWNER, ""]
    results: dict[str, str] = {}
    with t.connect("a") as conn:
        for text in calls:
            for owner in owners:
                results[f"{text} [{owner}]"] = refused_or_noop(conn, text, (run_id, owner))
        others = {
            "UPDATE {s}.schedules SET paused = true, target = '{{}}'": "",
            "DELETE FROM {s}.schedules": "",
            "INSERT INTO {s}.schedules (owner_oid, name, cron, tz, target) SELECT submitted_by_oid, 'nightly', "
            "'* * * * *', 'UTC', '{{}}' FROM {s}.runs": "",
            "INSERT INTO {s}.workers (worker_id, hostname, pid) VALUES ('w', 'h', 1)": "",
            "UPDATE {s}.workers SET heartbeat_at = now()": "",
            "INSERT INTO {s}.schema_version (version, name) VALUES (999, 'forged')": "",
            "UPDATE {s}.schema_version SET version = version + 100": "",
            "DELETE FROM {s}.schema_version": "",
            "TRUNCATE {s}.runs, {s}.nodes, {s}.events, {s}.signals": "",
            "ALTER TABLE {s}.runs DISABLE ROW LEVEL SECURITY": "",
            "DROP POLICY runs_visible ON {s}.runs": "",
            "CREATE OR REPLACE FUNCTION {s}.session_oid() RETURNS oid LANGUAGE sql AS 'SELECT 10::oid'": "",
            "CREATE TABLE {s}.trojan (x int)": "",
        }
        for text in others:
            results[text] = refused_or_noop(conn, text.format(s=s))
    writes = {k: v for k, v in results.items() if not k.startswith("SELECT")}
    # No direct write to any state table (or its definition) is even accepted.
    assert writes == {k: "refused:42501" for k in writes}
    # The functions either refused or changed nothing: everything stored about b's run is as it was.
    assert snapshot(t, run_id) == before
    assert (
        t.admin(
            "SELECT (SELECT count(*) FROM {state}.runs), (SELECT count(*) FROM {state}.nodes), "
            "(SELECT count(*) FROM {state}.events), (SELECT count(*) FROM {state}.signals), "
            "(SELECT count(*) FROM {state}.schedules), (SELECT count(*) FROM {state}.schema_version)"
        )
        == tables_before
    )
    assert t.admin("SELECT name, paused, cron FROM {state}.schedules") == [("nightly", False, "0 3 * * *")]
    # b's run still works: b signals it and its remaining step runs, once, as b.
    b.signal(run_id, "go", {"by": "b"})
    t.run_worker("b")
    assert t.status(run_id) == "completed"
    assert t.admin("SELECT label, note, sess FROM {b}.seen") == [("after signal", "b", t.role("b"))]
    assert t.admin("SELECT sent_by, payload FROM {state}.signals WHERE run_id = %s", (run_id,)) == [
        (t.role("b"), {"by": "b"})
    ]


def test_a_step_of_a_cannot_touch_b_run_either(tenants: Tenants) -> None:
    """The same through a's own step (on a worker holding both logins)."""
    t = tenants
    b = t.client("b")
    run_id = b.start(
        "wait_for_signal('go') ~> " + t.flow("'INSERT INTO {b}.seen(label) VALUES (''b'')'"), wait=False
    ).run_id
    t.run_worker("b")
    before = snapshot(t, run_id)
    s = sql.Identifier(t.schema).as_string(None)
    attempts = {
        "finish": f"SELECT {s}.finish_run('{run_id}', lease_owner, 'completed', NULL, NULL, NULL, NULL, NULL) "
        f"FROM {s}.runs WHERE run_id = '{run_id}'",
        "take": f"SELECT * FROM {s}.take_run('{run_id}', '{FORGED_OWNER}', 60, true, 8)",
        "signal": f"SELECT {s}.signal('{run_id}', 'go', NULL)",
        "cancel": f"SELECT {s}.cancel('{run_id}', 'a')",
        "update": f"UPDATE {s}.runs SET status = 'cancelled' WHERE run_id = '{run_id}'",
    }
    a = t.client("a")
    runs = {
        label: a.start("'" + text.replace("'", "''") + "'", name=label, wait=False).run_id
        for label, text in attempts.items()
    }
    t.run_worker("a", "b")
    # finish_run on a run the login cannot see selects no row: it completes, doing nothing.
    statuses = {label: t.status(r) for label, r in runs.items()}
    assert statuses == {"finish": "completed", **{k: "failed" for k in attempts if k != "finish"}}
    assert t.client("a").result(runs["finish"])["rows"] == []
    assert snapshot(t, run_id) == before
    assert t.status(run_id) == "waiting"


def test_none_of_a_runs_leak_to_b_or_to_an_outsider(tenants: Tenants) -> None:
    t = tenants
    a = t.client("a")
    done = a.start("'SELECT ''a-result'' AS x'", name="a_flow", key="k1").run_id
    parked = a.start("wait_for_signal('go') ~> 'SELECT 1'", name="a_waits", wait=False).run_id
    failed = a.start("'SELECT 1/0'", name="a_fails").run_id
    a.signal(parked, "other", {"secret": "a-payload"})
    a.schedule_add("a_sched", "0 4 * * *", "UTC", {"kind": "flow", "flow": "'SELECT ''a-sched'''"})
    t.run_worker("a")
    a_ids = [done, parked, failed]
    b = t.client("b")
    b.start("'SELECT 1'")
    # The API as b.
    assert all(r["run_id"] not in a_ids for r in b.list_runs(1000))
    assert [s["name"] for s in b.schedules()] == []
    for run_id in a_ids:
        for call in (b.get_run, b.result, b.nodes, b.explain, b.cancel):
            try:
                got = call(run_id)
            except RunNotFound:
                continue
            assert got in ([], None), (call, got)
        with pytest.raises(RunNotFound):
            b.signal(run_id, "go")
    # SQL as b: every table, the view and the read functions.
    s = sql.Identifier(t.schema).as_string(None)
    ids = [str(r) for r in a_ids]
    with t.connect("b") as conn:
        for table in ("runs", "nodes", "events", "signals"):
            n = conn.execute(
                f"SELECT count(*) FROM {s}.{table} WHERE run_id = ANY(%s::uuid[])", (ids,)
            ).fetchone()
            assert n == (0,), table
        assert conn.execute(
            f"SELECT count(*) FROM {s}.progress WHERE run_id = ANY(%s::uuid[])", (ids,)
        ).fetchone() == (0,)
        assert conn.execute(f"SELECT count(*) FROM {s}.schedules").fetchone() == (0,)
        assert conn.execute(
            f"SELECT count(*) FROM {s}.workers WHERE login_oid <> {s}.session_oid()"
        ).fetchone() == (0,)
        for run_id in ids:
            assert conn.execute(f"SELECT count(*) FROM {s}.status(%s)", (run_id,)).fetchone() == (0,)
            assert conn.execute(f"SELECT {s}.result(%s)", (run_id,)).fetchone() == (None,)
    # The CLI as b.
    env_cmd = [sys.executable, "-m", "dbt_durable", "--dsn", t.dsns["b"], "--schema", t.schema]
    listed = subprocess.run([*env_cmd, "status", "--json", "--limit", "1000"], capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert not set(ids) & {r["run_id"] for r in json.loads(listed.stdout)}
    assert "a_flow" not in listed.stdout and "a-result" not in listed.stdout
    for run_id in ids:
        for cmd in (["status", run_id], ["result", run_id], ["explain", run_id]):
            shown = subprocess.run([*env_cmd, *cmd], capture_output=True, text=True)
            assert shown.returncode == 2, shown.stdout
            assert "a-result" not in shown.stdout + shown.stderr
    # An outsider reads nothing at all.
    with t.connect("outsider") as conn:
        for table in (
            "runs",
            "nodes",
            "events",
            "signals",
            "schedules",
            "workers",
            "progress",
            "schema_version",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT 1 FROM {s}.{table} LIMIT 1")
        for fn in ("status(NULL::uuid)", "result(NULL::uuid)", "session_oid()", "claim_runs(1, 1)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT * FROM {s}.{fn}")


def test_granted_roles_hold_only_select_and_every_definer_function_pins_its_search_path(
    tenants: Tenants,
) -> None:
    t = tenants
    for who in ("worker", "a", "b", "outsider"):
        role = t.role(who)
        writes = t.admin(
            "SELECT c.relname, p.priv FROM pg_class c "
            "CROSS JOIN unnest(ARRAY['INSERT','UPDATE','DELETE','TRUNCATE','REFERENCES','TRIGGER']) AS p(priv) "
            "WHERE c.relnamespace = %s::regnamespace AND c.relkind IN ('r', 'v', 'p') "
            "AND has_table_privilege(%s, c.oid, p.priv)",
            (t.schema, role),
        )
        assert writes == [], (who, writes)
        seqs = t.admin(
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = %s::regnamespace AND c.relkind = 'S' "
            "AND (has_sequence_privilege(%s, c.oid, 'USAGE') OR has_sequence_privilege(%s, c.oid, 'UPDATE'))",
            (t.schema, role, role),
        )
        assert seqs == [], (who, seqs)
        assert t.admin("SELECT has_schema_privilege(%s, %s, 'CREATE')", (role, t.schema)) == [(False,)]
    definers = t.admin(
        "SELECT p.oid::regprocedure::text, p.proconfig FROM pg_proc p "
        "WHERE p.pronamespace = %s::regnamespace AND p.prosecdef",
        (t.schema,),
    )
    assert definers
    unpinned = [
        name for name, config in definers if not any(c.startswith("search_path=") for c in config or [])
    ]
    assert unpinned == []
    # What a granted role may execute: nothing that is not meant for it.
    callable_by_a = {
        str(name).split("(")[0].split(".")[-1]
        for (name,) in t.admin(
            "SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.pronamespace = %s::regnamespace "
            "AND has_function_privilege(%s, p.oid, 'EXECUTE')",
            (t.schema, t.role("a")),
        )
    }
    assert not callable_by_a & {"own_run", "visible_run", "fence", "grant_usage"}
    assert t.admin(
        "SELECT count(*) FROM pg_proc p WHERE p.pronamespace = %s::regnamespace "
        "AND has_function_privilege(%s, p.oid, 'EXECUTE')",
        (t.schema, t.role("outsider")),
    ) == [(0,)]


def test_internal_tables_are_not_writable_and_migrate_still_applies_new_migrations(
    tenants: Tenants, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = tenants
    for who in ("worker", "a", "b"):
        with t.connect(who) as conn:
            for text in (
                "INSERT INTO {state}.schema_version (version, name) VALUES (999, 'forged')",
                "INSERT INTO {state}.workers (worker_id, hostname, pid, login_oid) VALUES ('w', 'h', 1, 10)",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(t.flow(text))
    shipped = migrate_module.migrations()
    assert t.admin("SELECT max(version) FROM {state}.schema_version") == [(shipped[-1][0],)]
    assert t.admin("SELECT count(*) FROM {state}.workers") == [(0,)]
    extra = (shipped[-1][0] + 1, "9999_canary.sql", "CREATE TABLE __SCHEMA__.canary_migration (x int)")
    monkeypatch.setattr(migrate_module, "migrations", lambda: [*shipped, extra])
    assert t.client("owner").migrate() == ["9999_canary.sql"]
    assert t.admin("SELECT to_regclass(%s) IS NOT NULL", (f"{t.schema}.canary_migration",)) == [(True,)]


@pytest.mark.parametrize("forged_version", [999, 7])
def test_a_tenant_of_an_old_installation_cannot_block_the_security_upgrade(
    tenants: Tenants, monkeypatch: pytest.MonkeyPatch, forged_version: int
) -> None:
    t = tenants
    old = t.schema + "_old"
    shipped = migrate_module.migrations()
    try:
        monkeypatch.setattr(migrate_module, "migrations", lambda: [m for m in shipped if m[0] <= 6])
        owner = Client(Settings(dsn=t.dsns["owner"], schema=old))
        owner.migrate()
        t.query("owner", f"SELECT {old}.grant_usage(%s)", (t.role("a"),))
        # Under the old grants a can write the version table (the precondition of the attack).
        t.query(
            "a", f"INSERT INTO {old}.schema_version (version, name) VALUES (%s, 'forged')", (forged_version,)
        )
        monkeypatch.setattr(migrate_module, "migrations", lambda: shipped)
        owner.migrate()
        applied = {v for (v,) in t.admin(f"SELECT version FROM {old}.schema_version WHERE name <> 'forged'")}
        assert 7 in applied
        assert t.admin("SELECT has_table_privilege(%s, %s, 'UPDATE')", (t.role("a"), f"{old}.runs")) == [
            (False,)
        ]
    finally:
        t.admin(f"DROP SCHEMA IF EXISTS {old} CASCADE")


def test_a_forged_lease_owner_never_reaches_another_logins_sessions(tenants: Tenants) -> None:
    t = tenants
    w = t.worker("a", "b", once=False)

    def b_runner_sessions() -> set[tuple[int, str]]:
        rows = t.query(
            "a",
            "SELECT pid, application_name FROM pg_stat_activity WHERE usename = %s "
            "AND application_name LIKE 'dbt_durable:%%'",
            (t.role("b"),),
        )
        return {(int(pid), str(app)) for pid, app in rows}

    wait_for(lambda: any(app.endswith(":listen") for _, app in b_runner_sessions()), what="b's worker")
    # a reads b's runner id from pg_stat_activity (application_name is visible to everyone) ...
    b_sessions = b_runner_sessions()
    b_owner = next(app for _, app in b_sessions).split(":")[1]
    assert len(b_owner) == 16
    # ... and b has a session of its own named like that runner.
    with psycopg.connect(t.dsns["b"], autocommit=True, application_name=f"dbt_durable:{b_owner}") as b_conn:
        b_pid = b_conn.info.backend_pid
        s = sql.Identifier(t.schema).as_string(None)
        a = t.client("a")
        flow = compile_flow(t.flow("'INSERT INTO {a}.seen(label) VALUES (''a ran'')'"))
        with t.connect("a") as conn:
            # a cannot set a lease owner directly ...
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"UPDATE {s}.runs SET lease_owner = %s", (b_owner,))
            # ... but may create its own run claimed "by" b's runner, with a lease that expires
            # at once, so that a's runner takes it over and terminates the "previous owner".
            params = new_run_params(flow, "forged_owner", None, {}, b_owner, 0.05)
            row = conn.execute(a.q.create_run, params).fetchone()
            assert row is not None
            run_id = str(row[0])
            conn.execute("SELECT pg_notify('dbt_durable_wake', '')")
        wait_for(lambda: t.status(run_id) == "completed", what="a's forged run completing")
        # b's own session and b's runner sessions all survived.
        assert b_conn.execute("SELECT 1").fetchone() == (1,)
        assert b_conn.info.backend_pid == b_pid
        assert b_sessions <= b_runner_sessions()
    w.popen.terminate()
    assert w.wait(20) == 0, w.output()
    assert t.admin("SELECT label, sess FROM {a}.seen") == [("a ran", t.role("a"))]
    claimed = t.admin(
        "SELECT detail ->> 'previous_owner' FROM {state}.events WHERE run_id = %s AND kind = 'run_claimed'",
        (run_id,),
    )
    assert (b_owner,) in claimed  # the takeover did happen, from the forged owner


def test_a_signal_payload_over_one_mebibyte_is_refused_and_nothing_is_stored(tenants: Tenants) -> None:
    t = tenants
    a = t.client("a")
    run_id = a.start("wait_for_signal('go') ~> 'SELECT 1'", wait=False).run_id
    big = {"blob": "x" * (1 << 20)}
    with pytest.raises(psycopg.errors.ProgramLimitExceeded):
        a.signal(run_id, "go", big)
    with t.connect("a") as conn:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            conn.execute(t.flow("SELECT {state}.signal(%s, 'go', %s)"), (run_id, Jsonb(big)))
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):  # a deep-ish array is no way round it
            conn.execute(
                t.flow(
                    "SELECT {state}.signal(%s, 'go', (SELECT jsonb_agg(repeat('y', 100)) FROM generate_series(1, 20000)))"
                ),
                (run_id,),
            )
    assert t.admin("SELECT count(*) FROM {state}.signals") == [(0,)]
    a.signal(run_id, "go", {"blob": "x" * 1000})  # a normal payload still goes through
    assert t.admin("SELECT count(*) FROM {state}.signals") == [(1,)]
