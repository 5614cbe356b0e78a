"""The CLI views against a real Postgres: status (list, filters, tree, --json, --watch),
explain pictures, result, signal, cancel, restart, metrics, prune and compaction, connection
options after the subcommand, flow text that starts with a comment, and read-only commands
that never create an embedded database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from dbt_durable.api import Client
from dbt_durable.graph.build import compile_flow
from dbt_durable.graph.explain import NodeState, annotate, dot, mermaid, svg
from dbt_durable.views.model import Views, parse_age, parse_error
from tests.conftest import Space

LOOP_FLOW = (
    "'SELECT 0 AS n' |=> 'i' ~> loop(('SELECT $i.n + 1 AS n' |=> 'i') ~> 'SELECT 1', 'SELECT $i.n < 3') "
    "~> wait_for_signal('go') ~> 'SELECT 42 AS answer'"
)


def cli(
    *args: str, cwd: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("DBT_DURABLE_DSN", "DBT_DURABLE_SCHEMA")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "dbt_durable", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=full_env,
    )


def conn_opts(space: Space) -> list[str]:
    return ["--dsn", space.dsn, "--schema", space.schema]


def parked(space: Space, flow: str, **kw: object) -> str:
    """A run started and executed until it parks (waits) or ends."""
    client = space.client(park_after_s=0.3)
    return client.start(flow, **kw).run_id  # type: ignore[arg-type]


def test_status_lists_runs_with_progress_and_filters(space: Space) -> None:
    waiting = parked(space, LOOP_FLOW, name="looping")
    failed = parked(space, "'SELECT 1' ~> 'SELECT 1/0'", name="broken")
    # Connection options after the subcommand, as users type them.
    out = cli("status", "--json", *conn_opts(space))
    assert out.returncode == 0, out.stderr
    runs = {r["run_id"]: r for r in json.loads(out.stdout)}
    assert runs[waiting]["status"] == "waiting"
    # 3 static steps outside the loop (0.0.0, the wait, the last); loop iterations apart.
    assert runs[waiting]["progress"]["static_total"] == 3
    assert runs[waiting]["progress"]["static_done"] == 1
    assert runs[waiting]["progress"]["iterations_done"] == 9
    assert runs[failed]["status"] == "failed"
    only_failed = json.loads(cli("status", "--json", "--status", "failed", *conn_opts(space)).stdout)
    assert [r["run_id"] for r in only_failed] == [failed]
    by_flow = json.loads(cli("status", "--json", "--flow", "loop%", *conn_opts(space)).stdout)
    assert [r["run_id"] for r in by_flow] == [waiting]
    search = json.loads(cli("status", "--json", "--search", "division", *conn_opts(space)).stdout)
    assert [r["run_id"] for r in search] == [failed]
    plain = cli("status", *conn_opts(space))  # not a terminal: plain aligned text
    assert "1/3 +9 in loops" in plain.stdout
    assert "waiting for signal 'go'" in plain.stdout
    assert "─" not in plain.stdout and "│" not in plain.stdout


def test_model_filter_matches_dbt_model_runs(space: Space) -> None:
    run_id = parked(space, "'SELECT 1'", name='"db"."marts"."orders_pipeline"')
    parked(space, "'SELECT 1'", name="other")
    rows = json.loads(cli("status", "--json", "--model", "orders_pipeline", *conn_opts(space)).stdout)
    assert [r["run_id"] for r in rows] == [run_id]


def test_waiting_run_is_shown_as_waiting_not_as_an_error(space: Space) -> None:
    run_id = parked(space, LOOP_FLOW)
    out = cli("status", run_id, *conn_opts(space))
    assert out.returncode == 0, out.stderr
    assert "error" not in out.stdout.lower()
    assert f"waiting for signal 'go' (send it: dbt-durable signal {run_id} go)" in out.stdout
    # The loop is done (the wait after it started), with its iterations counted.
    loop_line = next(line for line in out.stdout.splitlines() if " 0.1 " in line)
    assert "completed" in loop_line and "×3 iterations" in loop_line


def test_unfinished_loop_is_not_marked_completed() -> None:
    flow = compile_flow("loop('SELECT 1' ~> 'SELECT 2', 'SELECT true') ~> 'SELECT 3'")
    # Two iterations done, the third not begun: the loop and the root are still running.
    steps = {"0.0.0.0": NodeState("completed", 2, 2), "0.0.0.1": NodeState("completed", 2, 2)}
    states = annotate(flow, steps, "running")
    assert states["0.0"].state == "running"
    assert states["0.0"].iterations == 2
    assert states["0"].state == "running"
    assert states["0.1"].state == "pending"
    # A sequence with steps still to run is not completed either.
    flow2 = compile_flow("'SELECT 1' ~> 'SELECT 2'")
    assert annotate(flow2, {"0.0": NodeState("completed", 1, 1)}, "running")["0"].state == "running"
    assert (
        annotate(
            flow2, {"0.0": NodeState("completed", 1, 1), "0.1": NodeState("completed", 1, 1)}, "completed"
        )["0"].state
        == "completed"
    )


def test_failed_run_status_is_actionable(space: Space) -> None:
    flow = "'SELECT 1' ~> $q$DO $b$ BEGIN RAISE EXCEPTION 'bad row' USING DETAIL = 'row 7', HINT = 'fix row 7', ERRCODE = '22023'; END $b$$q$ with (retries=1, backoff='0s')"
    run_id = parked(space, flow)
    out = cli("status", run_id, *conn_opts(space))
    assert out.returncode == 1
    text = out.stdout
    assert "FAILED at node 0.1 (sql, flow line 1:" in text
    assert "after 2 attempt(s)" in text
    assert "bad row  [SQLSTATE 22023]" in text
    assert "detail:   row 7" in text and "hint:     fix row 7" in text
    assert "RAISE EXCEPTION" in text  # the SQL
    assert f"dbt-durable resume {run_id}" in text
    data = json.loads(cli("status", run_id, "--json", *conn_opts(space)).stdout)
    assert data["failure"]["sqlstate"] == "22023" and data["failure"]["hint"] == "fix row 7"


def test_parse_error_splits_sqlstate_detail_and_hint() -> None:
    parts = parse_error("boom (SQLSTATE 22012)\nDETAIL: d\nHINT: h")
    assert parts == {"message": "boom", "sqlstate": "22012", "detail": "d", "hint": "h"}
    assert parse_age("30d") == 30 * 86400 and parse_age("90m") == 5400


def test_explain_formats_for_flows_and_runs(space: Space) -> None:
    text = "'SELECT 1' |=> 'a' ~> ('SELECT 2' & 'SELECT 3') ~> ('SELECT true' ?> 'SELECT 4' !> 'SELECT 5') ~> ('SELECT 6' | 'SELECT 7')"
    for fmt, marker in (
        ("text", "as $a"),
        ("mermaid", "flowchart TD"),
        ("dot", "digraph flow"),
        ("svg", "<svg"),
    ):
        out = cli("explain", text, "--format", fmt)
        assert out.returncode == 0, out.stderr
        assert marker in out.stdout
    flow = compile_flow(text)
    m = mermaid(flow)
    assert "-->|cond|" in m and "-->|then|" in m and "-->|else|" in m
    assert "join" in m and "race" in m
    assert '"0.1" -> "0.1.0"' in dot(flow)
    run_id = parked(space, LOOP_FLOW)
    out = cli("explain", run_id, "--format", "svg", *conn_opts(space))
    assert out.returncode == 0, out.stderr
    assert 'class="node st-waiting" data-node="0.2"' in out.stdout
    assert 'class="node st-completed" data-node="0.1"' in out.stdout
    assert "×3 iterations" in out.stdout
    assert "classDef waiting" in cli("explain", run_id, "--format", "mermaid", *conn_opts(space)).stdout
    assert "<svg" in svg(flow)


def test_flow_text_starting_with_a_comment_is_not_an_option(space: Space) -> None:
    flow = "-- nightly refresh\n'SELECT 1 AS one'"
    out = cli("start", flow, "--wait", *conn_opts(space))
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.strip().splitlines()[-1]
    assert json.loads(cli("result", run_id, *conn_opts(space)).stdout)["rows"] == [{"one": 1}]
    assert cli("explain", flow).returncode == 0


def test_signal_says_what_it_delivered_and_cancel_says_what_happened(space: Space) -> None:
    run_id = parked(space, LOOP_FLOW)
    out = cli("signal", run_id, "go", '{"ok": true}', *conn_opts(space))
    assert out.returncode == 0, out.stderr
    assert f"signal 'go' (#1) delivered to run {run_id}" in out.stdout
    assert "the run is waiting for it" in out.stdout
    early = parked(space, "sleep(3600) ~> wait_for_signal('later')")
    out = cli("signal", early, "later", *conn_opts(space))
    assert "buffered until the run reaches wait_for_signal('later')" in out.stdout
    out = cli("cancel", early, *conn_opts(space))
    assert out.returncode == 0 and "cancelled (it was waiting)" in out.stdout
    again = cli("cancel", early, *conn_opts(space))
    assert again.returncode == 1
    assert "nothing to cancel" in again.stderr and "already cancelled" in again.stderr
    assert cli("result", early, *conn_opts(space)).returncode == 1


def test_signal_consumed_by_a_live_wait_is_reported(space: Space) -> None:
    client = space.client(park_after_s=None)
    started = client.start("wait_for_signal('go') ~> 'SELECT 1'", wait=False)
    runner = threading.Thread(target=client.resume, args=(started.run_id,))
    runner.start()
    views = Views(space.settings())
    deadline = time.monotonic() + 20
    while views.run_view(started.run_id).states["0.0"].state != "waiting" and time.monotonic() < deadline:
        time.sleep(0.1)
    out = cli("signal", started.run_id, "go", *conn_opts(space))
    runner.join(30)
    assert "consumed by wait_for_signal at node 0.0" in out.stdout, out.stdout


def test_watch_follows_a_run_until_it_ends(space: Space) -> None:
    client = space.client()  # no parking: the runner waits for the signal in its thread
    started = client.start("'SELECT 1' ~> wait_for_signal('go') ~> 'SELECT 2'", wait=False)
    runner = threading.Thread(target=client.resume, args=(started.run_id,))
    runner.start()
    env = {k: v for k, v in os.environ.items() if k not in ("DBT_DURABLE_DSN", "DBT_DURABLE_SCHEMA")}
    watch = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dbt_durable",
            "status",
            started.run_id,
            "--watch",
            "--interval",
            "0.1",
            "--timeout",
            "90",
            *conn_opts(space),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert watch.stdout is not None
    lines = []
    for line in watch.stdout:  # until the watch has shown the run waiting live
        lines.append(line.rstrip("\n"))
        if line.startswith("waiting   0.1"):
            break
    client.signal(started.run_id, "go")
    lines += [line.rstrip("\n") for line in watch.stdout]
    assert watch.wait(60) == 0
    runner.join(30)
    assert "status running" in lines[0], lines
    assert "waiting   0          seq" in lines  # the root rolls up the wait below it
    assert lines.index("waiting   0.1        wait_for_signal  wait_for_signal('go')") < lines.index(
        next(x for x in lines if x.startswith("completed 0.2"))
    )
    assert lines[-1] == "run completed"


def test_restart_from_a_node_reruns_it_and_what_follows(space: Space) -> None:
    space.query("CREATE TABLE hits (step text)")
    flow = "'INSERT INTO hits VALUES (''a'')' ~> 'INSERT INTO hits VALUES (''b'')' ~> 'SELECT count(*) FROM hits'"
    client = space.client()
    run_id = client.start(flow).run_id
    out = cli("restart", run_id, "--from", "0.1", *conn_opts(space))
    assert out.returncode == 0, out.stderr
    assert "2 node(s) will run again" in out.stdout
    assert client.get_run(run_id)["status"] == "pending"
    client.resume(run_id)
    assert sorted(r[0] for r in space.query("SELECT step FROM hits")) == ["a", "b", "b"]
    assert client.result(run_id)["rows"] == [{"count": 3}]


def test_metrics_prometheus_text(space: Space) -> None:
    parked(space, "'SELECT 1'")
    parked(space, "'SELECT 1/0'")
    out = cli("metrics", *conn_opts(space))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert 'dbt_durable_runs{status="completed",kind="flow"} 1' in text
    assert 'dbt_durable_runs{status="failed",kind="flow"} 1' in text
    assert "# TYPE dbt_durable_node_duration_seconds histogram" in text
    assert 'dbt_durable_node_duration_seconds_bucket{kind="sql",status="completed",le="+Inf"} 1' in text
    assert 'dbt_durable_queue_depth{reason="pending"} 0' in text
    assert "dbt_durable_workers_alive 0" in text
    assert "dbt_durable_claim_latency_seconds_count" in text


def test_prune_deletes_old_finished_runs_in_batches(space: Space) -> None:
    old = parked(space, "loop('SELECT 1' ~> break()) ~> 'SELECT 2'")
    other = parked(space, "'SELECT 3'")
    live = parked(space, "wait_for_signal('x')")
    Client(space.settings()).signal(old, "s", None)
    space.query(
        "UPDATE {state}.runs SET finished_at = now() - interval '40 days' WHERE run_id = ANY(%s::uuid[])",
        ([old, live],),
    )
    out = cli("prune", "--older-than", "30d", "--batch-nodes", "1", *conn_opts(space))
    assert out.returncode == 0, out.stderr
    assert "pruned 1 finished run(s) older than 30d" in out.stdout
    left = {r[0] for r in space.query("SELECT run_id::text FROM {state}.runs")}
    assert left == {other, live}  # the waiting run is not finished, whatever its age
    assert space.query("SELECT count(*) FROM {state}.nodes WHERE run_id = %s", (old,)) == [(0,)]
    assert space.query("SELECT count(*) FROM {state}.signals WHERE run_id = %s", (old,)) == [(0,)]
    assert space.query("SELECT count(*) FROM {state}.events WHERE run_id = %s", (old,)) == [(0,)]


def test_compaction_keeps_counts_of_finished_loops(space: Space) -> None:
    flow = (
        "'SELECT 0 AS n' |=> 'i' ~> loop(('SELECT $i.n + 1 AS n' |=> 'i'), 'SELECT $i.n < 50') ~> 'SELECT 1'"
    )
    run_id = parked(space, flow)
    views = Views(space.settings())
    before = views.run_view(run_id)
    assert before.states["0.1"].iterations == 50
    assert views.compact(run_id, max_nodes=7) == 98  # 49 iterations of 2 steps
    after = views.run_view(run_id)
    assert after.states["0.1"].iterations == 50 and after.states["0.1"].state == "completed"
    assert space.query("SELECT count(*) FROM {state}.nodes WHERE run_id = %s", (run_id,)) == [(4,)]
    rows = json.loads(cli("status", "--json", *conn_opts(space)).stdout)
    assert rows[0]["progress"]["iterations_done"] == 100  # step executions in the loop
    out = cli("restart", run_id, "--from", "0.2", *conn_opts(space))
    assert out.returncode == 2 and "compacted" in out.stderr


def test_read_only_commands_never_create_an_embedded_database() -> None:
    folder = tempfile.mkdtemp(prefix="dd-nodb-")
    for args in (
        ["status"],
        ["result", "00000000-0000-0000-0000-000000000000"],
        ["explain", "00000000-0000-0000-0000-000000000000"],
    ):
        out = cli(*args, cwd=folder)
        assert out.returncode == 2, out.stderr
        assert "no database to read" in out.stderr
        assert str(Path(folder).resolve()) in out.stderr
        assert "--dsn" in out.stderr and "DBT_DURABLE_DSN" in out.stderr
        assert not (Path(folder) / ".dbt_durable").exists()


def test_connection_options_after_the_subcommand(space: Space) -> None:
    out = cli(
        "start", "'SELECT 7 AS seven'", "--wait", "--json", "--dsn", space.dsn, "--schema", space.schema
    )
    assert out.returncode == 0, out.stderr
    run_id = json.loads(out.stdout)["run_id"]
    out = cli("result", run_id, "--schema", space.schema, "--dsn", space.dsn)
    assert json.loads(out.stdout)["rows"] == [{"seven": 7}]
    out = cli("schedule", "list", "--json", "--dsn", space.dsn, "--schema", space.schema)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("fmt", ["text", "mermaid", "dot", "svg", "json"])
def test_explain_writes_a_file(fmt: str, tmp_path: Path) -> None:
    target = tmp_path / f"graph.{fmt}"
    out = cli("explain", "'SELECT 1' ~> loop('SELECT 2' ~> break())", "--format", fmt, "-o", str(target))
    assert out.returncode == 0, out.stderr
    assert target.read_text().strip()
