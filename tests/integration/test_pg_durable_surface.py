"""pg_durable 0.2.5's surface, end to end on a real PostgreSQL: one test per node function and
result shape (as pg_durable's docs and tests describe them), the df-compatible SQL surface run
by a real non-superuser granted role, and the loop guards. Written from pg_durable's documented
behaviour (docs/api-reference.md, USER_GUIDE.md, tests/e2e); no code of it is copied."""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
from psycopg import conninfo, sql

from dbt_durable.api import Client
from dbt_durable.config import Settings
from dbt_durable.store.migrate import apply_df_aliases
from tests.conftest import Space


def run(space: Space, flow: str, **kw: object) -> Any:
    started = space.client().start(flow, **kw)  # type: ignore[arg-type]
    assert started.outcome is not None
    return started.outcome


def rows(out: Any) -> list[dict[str, Any]]:
    assert out.status == "completed", out.error
    return list(out.result["rows"])


# -- HTTP -------------------------------------------------------------------------------------
class Echo(BaseHTTPRequestHandler):
    seen: list[dict[str, Any]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        Echo.seen.append(
            {"method": self.command, "path": self.path, "type": self.headers.get("Content-Type"), "raw": raw}
        )
        if self.path.startswith("/png"):
            body, ctype, status = b"\x89PNG\r\n\x1a\n\x00\x00\xff", "image/png", 200
        elif self.path.startswith("/missing"):
            body, ctype, status = b'{"error": "nope"}', "application/json", 404
        else:
            body, ctype, status = json.dumps({"method": self.command}).encode(), "application/json", 200
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _answer  # noqa: N815 (http.server's naming)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    Echo.seen = []
    monkeypatch.setenv("DBT_DURABLE_HTTP_ALLOW", "127.0.0.1")
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_http_defaults_to_post_and_returns_pg_durables_envelope(space: Space, server: str) -> None:
    out = run(space, f"http('{server}/a') |=> 'resp' ~> 'SELECT $resp.ok AS ok, $resp.status AS status'")
    assert rows(out) == [{"ok": True, "status": 200}]
    assert Echo.seen[0]["method"] == "POST"
    envelope = next(n for n in space.client().nodes(out.run_id) if n["kind"] == "http")["result"]
    assert {"status", "body", "encoding", "headers", "ok", "duration_ms"} <= set(envelope)
    assert envelope["encoding"] == "text" and isinstance(envelope["duration_ms"], int)


def test_http_4xx_is_a_result_with_ok_false(space: Space, server: str) -> None:
    out = run(
        space,
        f"http('{server}/missing', 'GET') |=> 'r' ~> ('SELECT $r.ok' ?> 'SELECT 1 AS x' !> 'SELECT 2 AS x')",
    )
    assert rows(out) == [{"x": 2}]


def test_binary_bodies_are_base64(space: Space, server: str) -> None:
    out = run(space, f"http('{server}/png', 'GET')")
    assert out.result["encoding"] == "base64"
    assert base64.b64decode(out.result["body"]) == b"\x89PNG\r\n\x1a\n\x00\x00\xff"


def test_vars_in_urls(space: Space, server: str) -> None:
    out = run(space, "http('{api}/v/{sys_label}', 'GET')", vars={"api": server}, name="lbl")
    assert out.status == "completed", out.error
    assert Echo.seen[0]["path"] == "/v/lbl"


def test_http_multipart_sends_parts_and_takes_whole_references(space: Space, server: str) -> None:
    data = base64.b64encode(b"hello part").decode()
    parts = json.dumps(
        [
            {"name": "file", "filename": "a.txt", "content_type": "text/plain", "data_b64": "$src.b"},
            {"name": "note", "data_b64": base64.b64encode(b"n").decode()},
        ]
    ).replace("'", "''")
    out = run(space, f"'SELECT ''{data}'' AS b' |=> 'src' ~> http_multipart('{server}/up', 'PUT', '{parts}')")
    assert out.status == "completed", out.error
    seen = Echo.seen[0]
    assert seen["method"] == "PUT" and seen["type"].startswith("multipart/form-data")
    assert (
        b'filename="a.txt"' in seen["raw"] and b"hello part" in seen["raw"] and b'name="note"' in seen["raw"]
    )
    bad = json.dumps([{"name": "f", "data_b64": "x$src.b"}])
    out = run(space, f"'SELECT 1 AS b' |=> 'src' ~> http_multipart('{server}/up', 'POST', '{bad}')")
    assert out.status == "failed" and "whole value" in (out.error or "")


def test_sql_expression_arguments_are_evaluated_when_the_run_starts(space: Space, server: str) -> None:
    space.query(f"ALTER ROLE CURRENT_USER SET app.url = '{server}'")
    try:
        out = run(
            space,
            "'SELECT ' || '1 AS one' |=> 'a' ~> http(current_setting('app.url') || '/x', 'GET')"
            " ~> sql(format('SELECT %s AS two', 2))",
        )
    finally:
        space.query("ALTER ROLE CURRENT_USER RESET app.url")
    assert rows(out) == [{"two": 2}]
    assert Echo.seen[0]["path"] == "/x"
    nodes = {n["exec_key"]: n for n in space.client().nodes(out.run_id)}
    assert nodes["@args"]["result"]["values"][0] == "SELECT 1 AS one"
    failed = run(space, "'SELECT ' || (1/0)::text")
    assert failed.status == "failed" and "division by zero" in (failed.error or "")


# -- signals, waits, substitutions ------------------------------------------------------------
def test_signal_names_result_shape_and_plain_text_payloads(space: Space) -> None:
    client = space.client()
    run_id = client.start(
        "wait_for_signal('approve-remediation') |=> 'sig' ~> wait_for_signal('x', 0.1) |=> 'late'"
        " ~> 'SELECT $sig::jsonb AS sig, $late::jsonb AS late'",
        wait=False,
    ).run_id
    space.query(f"SELECT {space.schema}.signal(%s, 'approve-remediation', 'approve')", (run_id,))
    out = client.resume(run_id)
    assert rows(out) == [
        {
            "sig": {"signal_name": "approve-remediation", "timed_out": False, "data": "approve"},
            "late": {"signal_name": "x", "timed_out": True, "data": None},
        }
    ]
    run_id = client.start(
        "wait_for_signal('go') |=> 's' ~> 'SELECT $s.data ->> ''ok'' AS ok'", wait=False
    ).run_id
    space.query(f"SELECT {space.schema}.signal(%s, 'go', '{{\"ok\": \"yes\"}}')", (run_id,))
    assert rows(client.resume(run_id)) == [{"ok": "yes"}]


def test_empty_signal_name_is_the_only_one_refused() -> None:
    from dbt_durable.errors import FlowError
    from dbt_durable.graph.build import compile_flow

    with pytest.raises(FlowError, match="cannot be empty"):
        compile_flow("wait_for_signal('')")
    compile_flow("wait_for_signal('a b/c.d-e')")


def test_sleep_and_schedule_result_shapes(space: Space) -> None:
    out = run(space, "sleep(1) |=> 's' ~> 'SELECT $s::jsonb AS s'")
    slept = rows(out)[0]["s"]
    assert slept["slept"] is True and slept["seconds"] == 1


def test_system_substitutions(space: Space) -> None:
    out = run(space, "'SELECT ''{sys_instance_id}'' AS id, ''{sys_label}'' AS label'", name="nightly")
    assert rows(out) == [{"id": out.run_id, "label": "nightly"}]


def test_unbound_names_are_left_as_written(space: Space) -> None:
    out = run(space, "$$SELECT '$not_a_result' AS t, 'a$b' ~ '^a\\$b$' AS m$$")
    assert rows(out) == [{"t": "$not_a_result", "m": True}]


# -- operators --------------------------------------------------------------------------------
def test_race_resolves_on_the_first_branch_to_finish_even_a_failed_one(space: Space) -> None:
    out = run(space, "'SELECT 1/0' | 'SELECT pg_sleep(5), 1 AS late'")
    assert out.status == "failed" and "division by zero" in (out.error or "")
    out = run(space, "'SELECT pg_sleep(2); SELECT 1/0' | 'SELECT 7 AS fast'")
    assert rows(out) == [{"fast": 7}]


@pytest.mark.parametrize(
    ("value", "truth"),
    [
        ("'off'", True),
        ("'n'", True),
        ("'no'", False),
        ("'F'", False),
        ("' yes '", True),
        ("'0.0'", False),
        ("''", False),
        ("'[]'::jsonb", False),
        ("'{}'::jsonb", False),
        ("'[0]'::jsonb", True),
        ("0.0", False),
    ],
)
def test_truthiness_is_pg_durables(space: Space, value: str, truth: bool) -> None:
    v = value.replace("'", "''")
    out = run(space, f"'SELECT {v}' ?> 'SELECT true AS t' !> 'SELECT false AS t'")
    assert rows(out) == [{"t": truth}]


def test_break_in_a_loop_condition_ends_the_loop_with_its_value(space: Space) -> None:
    for flow in (
        "loop('SELECT ''body''', 'SELECT 1' ~> break('condition-done'))",
        "'SELECT ''prefix''' ~> loop('SELECT ''body''', 'SELECT 1' ~> break('condition-done'))",
        "loop('SELECT 1', ('SELECT 1' ?> break('{\"n\": 1}') !> 'SELECT true'))",
    ):
        out = run(space, flow)
        assert out.status == "completed", out.error
    assert out.result == {"n": 1}
    assert run(space, "loop('SELECT 1', 'SELECT 1' ~> break('condition-done'))").result == "condition-done"


def test_break_outside_a_loop_and_if_rows_on_an_unbound_name_fail_when_they_run(space: Space) -> None:
    out = run(space, "'SELECT 1' ~> break('x')")
    assert out.status == "failed" and "break() outside of a loop" in (out.error or "")
    out = run(space, "if_rows('nothing', 'SELECT 1', 'SELECT 2')")
    assert out.status == "failed" and "'nothing' is not bound" in (out.error or "")
    out = run(
        space, "'SELECT 1' ~> if_rows('nothing', 'SELECT 1', 'SELECT 2 AS e') ~> ('SELECT 0' |=> 'nothing')"
    )
    assert out.status == "failed"


# -- loops ------------------------------------------------------------------------------------
def test_max_iterations_stops_a_runaway_loop(space: Space) -> None:
    out = run(space, "loop('SELECT 1 AS one', 'SELECT true') with (max_iterations=5)")
    assert out.status == "failed" and "max_iterations=5" in (out.error or "")
    assert (
        sum(
            1
            for n in space.client().nodes(out.run_id)
            if n["kind"] == "sql" and n["exec_key"].startswith("0.0#")
        )
        == 5
    )
    space.query("CREATE TABLE ticks(i int)")
    out = run(
        space,
        "(@> ('INSERT INTO ticks VALUES (1)' ~> ('SELECT count(*) >= 3 FROM ticks' ?> break()))) with (max_iterations=0)",
    )
    assert out.status == "completed", out.error


def test_default_max_iterations_is_documented_and_pg_durables() -> None:
    from dbt_durable.graph.build import DEFAULT_MAX_ITERATIONS

    assert DEFAULT_MAX_ITERATIONS == 100_000


def test_an_idle_loop_is_throttled_and_a_busy_one_is_not(space: Space) -> None:
    started = time.monotonic()
    out = run(space, "loop('SELECT 1 AS same', 'SELECT true') with (max_iterations=16)")
    idle = time.monotonic() - started
    assert "max_iterations=16" in (out.error or "")
    events = space.query(
        "SELECT count(*) FROM {state}.events WHERE run_id = %s AND kind = 'loop_throttled'", (out.run_id,)
    )
    assert events == [(1,)]
    assert idle >= 0.01 + 0.02 + 0.04 + 0.08 + 0.16  # six throttled iterations, doubling from 10 ms
    out = run(space, "loop('SELECT {sys_node} AS changing', 'SELECT true') with (max_iterations=30)")
    assert space.query(
        "SELECT count(*) FROM {state}.events WHERE run_id = %s AND kind = 'loop_throttled'", (out.run_id,)
    ) == [(0,)]


# -- the df SQL surface, as a granted role ----------------------------------------------------
@pytest.fixture
def tenant(space: Space) -> Iterator[tuple[str, str, str]]:
    """(login DSN, role name, alias schema) of a non-superuser granted role, with df aliases."""
    space.client().migrate()
    tag = secrets.token_hex(3)
    role, other, alias = f"dd_df_{tag}", f"dd_other_{tag}", f"df_{tag}"
    with psycopg.connect(space.admin_dsn, autocommit=True) as conn:
        for name in (role, other):
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER").format(sql.Identifier(name)))
            conn.execute(
                sql.SQL("GRANT ALL ON SCHEMA {} TO {}").format(
                    sql.Identifier(space.work), sql.Identifier(name)
                )
            )
        conn.execute(sql.SQL("SELECT {}.grant_usage(%s)").format(sql.Identifier(space.schema)), (role,))
        conn.execute(sql.SQL("SELECT {}.grant_usage(%s)").format(sql.Identifier(space.schema)), (other,))
        apply_df_aliases(conn, space.schema, alias)
    try:
        yield conninfo.make_conninfo(space.dsn, user=role), role, alias
    finally:
        with psycopg.connect(space.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(alias)))
            for name in (role, other):
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def _q(dsn: str, text: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(text, params or None)
        return cur.fetchall() if cur.description else []


def test_df_surface_start_status_result_signal_as_a_granted_role(
    space: Space, tenant: tuple[str, str, str]
) -> None:
    dsn, role, df = tenant
    s = space.schema
    client = Client(Settings(dsn=dsn, schema=s))
    (run_id,) = _q(
        dsn,
        f"SELECT {df}.start($$wait_for_signal('go') |=> 'g' ~> 'SELECT $g.data AS d, current_user AS u'$$, 'my-job')",
    )[0]
    assert _q(dsn, f"SELECT {df}.status(%s)", (run_id,)) == [("pending",)]
    assert _q(dsn, f"SELECT {df}.status('not-an-id')") == [(None,)]
    _adopt(dsn, s, run_id)  # what the runner does when it claims the run (text_runs)
    _q(dsn, f"SELECT {df}.signal(%s, 'go', 'yes')", (run_id,))
    out = client.resume(run_id)
    assert rows(out) == [{"d": "yes", "u": role}]
    assert _q(dsn, f"SELECT {df}.status(%s), {df}.result(%s)::jsonb -> 'rows'", (run_id, run_id)) == [
        ("completed", [{"d": "yes", "u": role}])
    ]
    (plain,) = _q(dsn, f"SELECT {s}.start('SELECT 40 + 2 AS answer')")[0]
    assert rows(client.resume(plain)) == [{"answer": 42}]
    listed = _q(dsn, f"SELECT instance_id, label, status FROM {df}.list_instances()")
    assert (run_id, "my-job", "completed") in listed and (plain, None, "completed") in listed
    nodes = _q(dsn, f"SELECT node_id, node_type, result_name, status FROM {df}.instance_nodes(%s)", (run_id,))
    assert ("0.0.0", "SIGNAL", "g", "completed") in nodes
    assert f"run {run_id}" in _q(dsn, f"SELECT {df}.explain(%s)", (run_id,))[0][0]
    assert _q(dsn, f"SELECT total_instances, completed_instances FROM {df}.metrics()") == [(2, 2)]
    (cancel_me,) = _q(dsn, f"SELECT {df}.start('sleep(60)')")[0]
    assert _q(dsn, f"SELECT {df}.cancel(%s, 'no')", (cancel_me,)) == [("cancelled",)]


def _adopt(dsn: str, schema: str, run_id: str) -> None:
    import asyncio

    from dbt_durable.runner.text_runs import is_text_run, load_text_run

    async def go() -> None:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        async with conn:
            text, plan, graph_hash = (
                await (
                    await conn.execute(
                        sql.SQL(
                            "SELECT flow_text, plan::text, graph_hash FROM {}.runs WHERE run_id = %s"
                        ).format(sql.Identifier(schema)),
                        (run_id,),
                    )
                ).fetchone()
            ) or ("", None, "")
            assert is_text_run(plan, graph_hash)
            await load_text_run(conn, schema, run_id, text)

    asyncio.run(go())


def test_text_runs_refuse_text_that_does_not_parse(space: Space, tenant: tuple[str, str, str]) -> None:
    from dbt_durable.runner.text_runs import TextRunInvalid

    dsn, _, df = tenant
    (run_id,) = _q(dsn, f"SELECT {df}.start($$'SELECT 1' ~>$$)")[0]
    with pytest.raises(TextRunInvalid, match="1:14"):
        _adopt(dsn, space.schema, run_id)


def test_df_start_parse_errors_fail_the_run_with_their_position(
    space: Space, tenant: tuple[str, str, str]
) -> None:
    dsn, _, df = tenant
    (run_id,) = _q(dsn, f"SELECT {df}.start($$'SELECT 1' ~> nope('x')$$)")[0]
    out = Client(Settings(dsn=dsn, schema=space.schema)).resume(run_id)
    assert (
        out.status == "failed"
        and "1:15" in (out.error or "")
        and "unknown function 'nope'" in (out.error or "")
    )


def test_df_list_instances_keyset_pages(space: Space, tenant: tuple[str, str, str]) -> None:
    dsn, _, df = tenant
    made = {_q(dsn, f"SELECT {df}.start('SELECT {i}', 'page')")[0][0] for i in range(5)}
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        page = _q(
            dsn, f"SELECT instance_id, next_cursor FROM {df}.list_instances(NULL, 2, 'page', %s)", (cursor,)
        )
        seen += [r[0] for r in page]
        cursor = page[-1][1]
        if cursor is None:
            break
    assert len(seen) == 5 and set(seen) == made
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        _q(dsn, f"SELECT * FROM {df}.list_instances(NULL, 2, NULL, 'zz')")
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        _q(dsn, f"SELECT * FROM {df}.list_instances(NULL, 5000)")


def test_df_surface_honours_isolation(space: Space, tenant: tuple[str, str, str]) -> None:
    dsn, role, df = tenant
    other = conninfo.make_conninfo(space.dsn, user=role.replace("dd_df_", "dd_other_"))
    (run_id,) = _q(dsn, f"SELECT {df}.start('SELECT 1', 'secret')")[0]
    assert _q(other, f"SELECT {df}.status(%s), {df}.result(%s)", (run_id, run_id)) == [(None, None)]
    assert _q(other, f"SELECT count(*) FROM {df}.list_instances()") == [(0,)]
    assert _q(other, f"SELECT total_instances FROM {df}.metrics()") == [(0,)]
    for call in (
        f"{df}.signal(%s, 'go')",
        f"{df}.cancel(%s)",
        f"{df}.instance_nodes(%s)",
        f"{df}.explain(%s)",
    ):
        with pytest.raises(psycopg.errors.NoDataFound):
            _q(other, f"SELECT * FROM {call}", (run_id,))
    # The run executes only on its submitter's login.
    with pytest.raises(Exception, match="belongs to role|no run"):
        Client(Settings(dsn=other, schema=space.schema)).resume(run_id)
    # Nothing of the df surface is granted to PUBLIC.
    assert _q(
        space.admin_dsn,
        "SELECT count(*) FROM pg_proc p, aclexplode(p.proacl) a WHERE p.pronamespace = ANY (%s::regnamespace[]) AND a.grantee = 0",
        ([space.schema, df],),
    ) == [(0,)]


def test_df_aliases_refuse_a_foreign_df_schema(space: Space) -> None:
    from dbt_durable.errors import DurableError

    space.client().migrate()
    name = f"df_{secrets.token_hex(3)}"
    with psycopg.connect(space.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        try:
            with pytest.raises(DurableError, match="is not dbt-durable"):
                apply_df_aliases(conn, space.schema, name)
        finally:
            conn.execute(sql.SQL("DROP SCHEMA {}").format(sql.Identifier(name)))
