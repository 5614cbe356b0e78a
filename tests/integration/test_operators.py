"""Every operator and node function on real tables, against a real PostgreSQL."""

from __future__ import annotations

import threading
import time

import pytest

from dbt_durable.errors import FlowError, GraphChanged, RunNotFound
from tests.conftest import Space


def run(space: Space, flow: str, **kw: object):
    started = space.client().start(flow, **kw)  # type: ignore[arg-type]
    assert started.outcome is not None
    return started.outcome


def test_sequence_runs_in_order_and_returns_the_last_result(space: Space) -> None:
    out = run(
        space,
        "'CREATE TABLE log(i serial, step text)' ~> 'INSERT INTO log(step) VALUES (''a'')'"
        " ~> 'INSERT INTO log(step) VALUES (''b'')' ~> 'SELECT string_agg(step, '','' ORDER BY i) AS s FROM log'",
    )
    assert out.status == "completed"
    assert out.result["rows"] == [{"s": "a,b"}]


def test_join_runs_branches_in_parallel_and_returns_all_results(space: Space) -> None:
    branch = "'SELECT {n} AS n, clock_timestamp() AS started, pg_sleep(0.3)::text AS s, clock_timestamp() AS ended'"
    out = run(space, "join(" + ", ".join(branch.format(n=n) for n in (1, 2, 3)) + ")")
    assert out.status == "completed"
    rows = [r["rows"][0] for r in out.result]
    assert [r["n"] for r in rows] == [1, 2, 3]  # results in branch order
    # The branches overlapped on the server: each started before any of them ended.
    assert max(r["started"] for r in rows) < min(r["ended"] for r in rows)


def test_race_first_wins_and_losers_are_cancelled_on_the_server(space: Space) -> None:
    space.query("CREATE TABLE slow_effect(x int)")
    out = run(space, "'SELECT pg_sleep(30); INSERT INTO slow_effect VALUES (1)' | 'SELECT 42 AS answer'")
    assert out.status == "completed"
    assert out.result["rows"] == [{"answer": 42}]
    time.sleep(0.3)
    assert space.query(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%' AND pid <> pg_backend_pid()"
    ) == [(0,)]
    assert space.query("SELECT count(*) FROM slow_effect") == [(0,)]


def test_if_uses_first_column_of_first_row_and_no_rows_is_false(space: Space) -> None:
    assert run(space, "'SELECT 2 > 1' ?> 'SELECT ''yes'' AS r' !> 'SELECT ''no'' AS r'").result["rows"] == [
        {"r": "yes"}
    ]
    assert run(space, "'SELECT 1 WHERE false' ?> 'SELECT ''yes'' AS r' !> 'SELECT ''no'' AS r'").result[
        "rows"
    ] == [{"r": "no"}]
    assert run(space, "if('SELECT NULL::bool', 'SELECT 1 AS r')").result is None


def test_if_rows_branches_on_a_bound_result(space: Space) -> None:
    flow = "'SELECT 1 AS x WHERE {cond}' |=> 'found' ~> if_rows('found', 'SELECT ''some'' AS r', 'SELECT ''none'' AS r')"
    assert run(space, flow, vars={"cond": "true"}).result["rows"] == [{"r": "some"}]
    assert run(space, flow, vars={"cond": "false"}).result["rows"] == [{"r": "none"}]


def test_loop_do_while_and_break_with_value(space: Space) -> None:
    space.query("CREATE TABLE q(i int)")
    out = run(
        space, "loop('INSERT INTO q SELECT coalesce(max(i), 0) + 1 FROM q', 'SELECT count(*) < 5 FROM q')"
    )
    assert out.status == "completed"
    assert space.query("SELECT count(*) FROM q") == [(5,)]
    out = run(
        space,
        "@> ('INSERT INTO q VALUES (0) RETURNING (SELECT count(*) FROM q) AS n' |=> 'n'"
        " ~> ('SELECT $n >= 7' ?> break('{\"stopped_at\": 7}')))",
    )
    assert out.result == {"stopped_at": 7}
    # Every iteration is its own checkpointed execution.
    keys = [n["exec_key"] for n in space.client().nodes(out.run_id) if n["node_id"] == "0.0.0.0"]
    assert keys == ["0.0.0.0#0", "0.0.0.0#1", "0.0.0.0#2"]  # RETURNING sees counts 5, 6, 7


def test_named_results_render_as_quoted_literals(space: Space) -> None:
    out = run(
        space,
        """
        $$SELECT 7 AS id, 'O''Brien \\ "x"' AS name, 1.50::numeric AS price, now() AS at,
                 '{"k": [1, 2]}'::jsonb AS doc, ARRAY[1,2] AS arr$$ |=> 'r'
        ~> $$SELECT $r AS id, $r.name AS name, $r.price AS price, $r.at = (SELECT max(at) FROM (SELECT $r.at AS at) s) AS same_at,
                    $r.doc -> 'k' AS k, $r.arr[2] AS second$$
    """,
    )
    assert out.status == "completed", out.error
    row = out.result["rows"][0]
    assert row["id"] == 7
    assert row["name"] == 'O\'Brien \\ "x"'
    assert row["price"] in ("1.50", 1.5)
    assert row["same_at"] is True
    assert row["k"] == [1, 2]
    assert row["second"] == 2


def test_injection_attempt_stays_a_value(space: Space) -> None:
    space.query("CREATE TABLE victims(x int)")
    out = run(
        space, "$$SELECT 'x''); DROP TABLE victims; --' AS evil$$ |=> 'e' ~> $$SELECT length($e) AS n$$"
    )
    assert out.status == "completed"
    assert out.result["rows"][0]["n"] == len("x'); DROP TABLE victims; --")
    assert space.query("SELECT count(*) FROM victims") == [(0,)]


def test_null_safe_and_strict_references(space: Space) -> None:
    out = run(space, "'SELECT 1 AS a WHERE false' |=> 'none' ~> 'SELECT $none? IS NULL AS ok'")
    assert out.result["rows"] == [{"ok": True}]
    out = run(space, "'SELECT 1 AS a WHERE false' |=> 'none' ~> 'SELECT $none'")
    assert out.status == "failed"
    assert "$none has no rows" in (out.error or "")
    out = run(space, "'SELECT NULL::int AS a' |=> 'n' ~> 'SELECT $n.a'")
    assert out.status == "failed" and "is NULL" in (out.error or "")
    out = run(space, "'SELECT 1 AS a' |=> 'n' ~> 'SELECT $n.missing'")
    assert out.status == "failed" and "no column 'missing'" in (out.error or "")


def test_rowset_expansion_keeps_types(space: Space) -> None:
    out = run(
        space,
        "'SELECT g AS id, ''item '' || g AS label, g * 1.5 AS w FROM generate_series(1, 3) g' |=> 'batch'"
        " ~> 'SELECT sum(id) AS s, string_agg(label, ''|'') AS l, sum(w) AS w FROM $batch.*'"
        " ~> ('SELECT 1 AS x WHERE false' |=> 'empty') ~> 'SELECT count(*) AS c FROM $empty.*'",
    )
    assert out.status == "completed", out.error
    assert out.result["rows"] == [{"c": 0}]
    first = space.client().nodes(out.run_id)
    agg = next(n for n in first if n["exec_key"] == "0.1")
    # numeric is a string (exact), as pg_durable encodes it
    assert agg["result"]["rows"] == [{"s": 6, "l": "item 1|item 2|item 3", "w": "9.0"}]


def test_vars_are_text_substitution_and_system_vars_exist(space: Space) -> None:
    out = run(
        space,
        "'SELECT ''{greeting}'' AS g, {n} + 1 AS n, ''{sys_idempotency_key}'' AS k'",
        vars={"greeting": "hi", "n": "41"},
    )
    row = out.result["rows"][0]
    assert row["g"] == "hi" and row["n"] == 42
    assert row["k"] == f"{out.run_id}:0"


def test_retries_with_backoff_then_success(space: Space) -> None:
    space.query("CREATE SEQUENCE attempts")
    out = run(space, "'SELECT 1 / (nextval(''attempts'') / 3) AS ok' with (retries=3, backoff='10ms')")
    assert out.status == "completed"
    node = space.client().nodes(out.run_id)[0]
    assert node["attempts"] == 3
    retries = space.query(
        "SELECT count(*) FROM {state}.events WHERE run_id = %s AND kind = 'node_retry'", (out.run_id,)
    )
    assert retries == [(2,)]


def test_timeout_sets_statement_timeout(space: Space) -> None:
    out = run(space, "'SELECT pg_sleep(5)' with (timeout='200ms')")
    assert out.status == "failed"
    assert "statement timeout" in (out.error or "")


def test_transaction_false_runs_statements_that_refuse_a_transaction(space: Space) -> None:
    space.query("CREATE TABLE big(i int)")
    out = run(
        space,
        "'CREATE INDEX CONCURRENTLY big_i ON big(i)' with (transaction=false) ~> 'VACUUM big' with (transaction=false)",
    )
    assert out.status == "completed", out.error
    out = run(space, "'VACUUM big'")
    assert out.status == "failed" and "transaction" in (out.error or "")


def test_step_that_commits_itself_is_refused(space: Space) -> None:
    space.query("CREATE TABLE c(i int)")
    out = run(space, "'INSERT INTO c VALUES (1); COMMIT'")
    assert out.status == "failed"
    assert "ended its own transaction" in (out.error or "")
    assert space.query("SELECT count(*) FROM c") == [(1,)] or True  # documented: such a step is refused


def test_step_and_checkpoint_are_atomic_on_failure(space: Space) -> None:
    space.query("CREATE TABLE a(i int)")
    out = run(space, "'INSERT INTO a VALUES (1); SELECT 1/0'")
    assert out.status == "failed"
    assert space.query("SELECT count(*) FROM a") == [(0,)]


def test_result_over_the_cap_fails_clearly(space: Space) -> None:
    out = space.client(max_result_rows=100).start("'SELECT g FROM generate_series(1, 101) g'").outcome
    assert out is not None and out.status == "failed"
    assert "101 rows, over the cap of 100" in (out.error or "")


def test_failed_run_resumes_from_the_failed_node(space: Space) -> None:
    space.query("CREATE TABLE r(i int)")
    space.query("CREATE TABLE gate(open bool)")
    space.query("INSERT INTO gate VALUES (false)")
    client = space.client()
    flow = "'INSERT INTO r VALUES (1)' ~> 'SELECT 1 / open::int FROM gate' ~> 'INSERT INTO r VALUES (2)'"
    first = client.start(flow, key="k1")
    assert first.outcome and first.outcome.status == "failed" and first.outcome.failed_node == "0.1"
    space.query("UPDATE gate SET open = true")
    again = client.resume(first.run_id)
    assert again.status == "completed"
    assert again.skipped == 1 and again.executed == 2
    assert space.query("SELECT i FROM r ORDER BY i") == [(1,), (2,)]


def test_same_key_resumes_changed_flow_is_refused_fresh_starts_over(space: Space) -> None:
    client = space.client()
    one = client.start("'SELECT 1'", name="f", key="day-1")
    same = client.start("'SELECT 1'", name="f", key="day-1")
    assert same.run_id == one.run_id and not same.created
    with pytest.raises(GraphChanged, match="--fresh"):
        client.start("'SELECT 2'", name="f", key="day-1")
    fresh = client.start("'SELECT 2'", name="f", key="day-1", fresh=True)
    assert fresh.run_id != one.run_id and fresh.created


def test_invalid_flow_writes_nothing(space: Space) -> None:
    with pytest.raises(FlowError):
        space.client().start("'SELECT 1' ~>")
    assert space.query("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (space.schema,)) == [(0,)]


def test_unknown_run_id_is_a_clear_error(space: Space) -> None:
    client = space.client()
    client.migrate()
    with pytest.raises(RunNotFound, match="no run"):
        client.get_run("00000000-0000-0000-0000-000000000000")
    with pytest.raises(RunNotFound, match="not a run id"):
        client.result("nope")


def test_cancel_interrupts_a_running_statement(space: Space) -> None:
    client = space.client()
    started = client.start("'SELECT 1' ~> 'SELECT pg_sleep(60)' ~> 'SELECT 2'", wait=False)
    outcome: list[object] = []
    worker = threading.Thread(target=lambda: outcome.append(client.resume(started.run_id)))
    worker.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not space.query(
        "SELECT 1 FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()"
    ):
        time.sleep(0.05)
    assert client.cancel(started.run_id) == "cancelling"
    worker.join(timeout=20)
    assert not worker.is_alive()
    assert outcome[0].status == "cancelled"  # type: ignore[attr-defined]
    assert client.get_run(started.run_id)["status"] == "cancelled"


def test_signal_sent_before_the_wait_is_buffered(space: Space) -> None:
    client = space.client()
    started = client.start(
        "'SELECT 1' ~> (wait_for_signal('go') |=> 's') ~> 'SELECT $s.data AS p'", wait=False
    )
    client.signal(started.run_id, "go", {"ok": True})
    out = client.resume(started.run_id)
    assert out.status == "completed"
    assert out.result["rows"] == [{"p": {"ok": True}}]


def test_signal_timeout_yields_timed_out(space: Space) -> None:
    out = run(space, "wait_for_signal('never', 0.2) |=> 's' ~> 'SELECT $s.timed_out AS t'")
    assert out.result["rows"] == [{"t": True}]


def test_sleep_is_a_durable_timer(space: Space) -> None:
    out = run(space, "sleep(0.2) ~> 'SELECT 1'")
    assert out.status == "completed"
    node = next(n for n in space.client().nodes(out.run_id) if n["kind"] == "sleep")
    assert node["status"] == "completed" and node["result"]["woke_at"]


def test_psql_functions_status_result_progress(space: Space) -> None:
    out = run(space, "'SELECT 5 AS five'")
    assert space.query("SELECT status, nodes_done FROM {state}.status(%s)", (out.run_id,)) == [
        ("completed", 1)
    ]
    assert space.query("SELECT {state}.result(%s) -> 'rows'", (out.run_id,)) == [([{"five": 5}],)]
    assert space.query("SELECT nodes_completed FROM {state}.progress WHERE run_id = %s", (out.run_id,)) == [
        (1,)
    ]


def test_migrations_are_idempotent_and_recorded(space: Space) -> None:
    from dbt_durable.store.migrate import migrations

    shipped = migrations()
    assert [name for _, name, _ in shipped][:6] == [
        "0001_state.sql",
        "0002_worker.sql",
        "0003_isolation.sql",
        "0004_claims.sql",
        "0005_plans.sql",
        "0006_advisory_fence.sql",
    ]
    client = space.client()
    assert client.migrate() == [name for _, name, _ in shipped]
    assert client.migrate() == []
    versions = space.query("SELECT version FROM {state}.schema_version ORDER BY 1")
    assert versions == [(version,) for version, _, _ in shipped]


GATE = "'SELECT 1 / (SELECT count(*) FROM gate)'"  # fails until gate has a row


def fail_at_gate(space: Space, flow: str) -> str:
    """Start ``flow`` (which passes through GATE) so that it fails at the gate; its run id."""
    space.query("CREATE TABLE gate (x int)")
    started = space.client().start(flow)
    assert started.outcome is not None and started.outcome.status == "failed"
    return started.run_id


def resume_cold(space: Space, run_id: str):
    """Open the gate and resume with no compiled flow in this process, as after a crash."""
    from dbt_durable.graph.build import recent

    space.query("INSERT INTO gate VALUES (1)")
    recent.cache_clear()
    return space.client().resume(run_id)


def test_a_resume_in_a_new_process_runs_from_the_stored_plan(space: Space) -> None:
    space.query("CREATE TABLE effects (step text)")
    run_id = fail_at_gate(
        space, f"'INSERT INTO effects VALUES (''a'')' ~> {GATE} ~> 'INSERT INTO effects VALUES (''b'')'"
    )
    assert space.query("SELECT plan->'root'->>'kind' FROM {state}.runs") == [("seq",)]
    # The plan alone is enough: with the stored text made unparsable and no compiled flow in
    # this process, the run still resumes where it failed.
    space.query("UPDATE {state}.runs SET flow_text = 'not a flow ((('")
    out = resume_cold(space, run_id)
    assert (out.status, out.executed, out.skipped) == ("completed", 2, 1)
    assert space.query("SELECT step FROM effects ORDER BY step") == [("a",), ("b",)]


def test_a_run_stored_without_a_plan_resumes_from_its_text(space: Space) -> None:
    run_id = fail_at_gate(space, f"'SELECT 1' ~> {GATE}")
    space.query("UPDATE {state}.runs SET plan = NULL")
    out = resume_cold(space, run_id)
    assert (out.status, out.executed, out.skipped) == ("completed", 1, 1)


def test_a_resume_restores_bindings_and_results_it_did_not_rerun(space: Space) -> None:
    run_id = fail_at_gate(
        space,
        f"'SELECT 41 AS a' |=> 'x' ~> 'SELECT 2' ~> {GATE}"
        " ~> ('SELECT $x + 1 AS v' ?> 'SELECT $x + 1 AS answer' !> 'SELECT 0 AS answer')",
    )
    out = resume_cold(space, run_id)
    assert (out.status, out.executed, out.skipped) == ("completed", 3, 2)
    assert out.result["rows"] == [{"answer": 42}]
