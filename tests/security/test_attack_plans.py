"""Rows a tenant writes are never trusted by a worker: a forged plan runs only as its own run,
a forged build runs no dbt, and hostile values (deep JSON, bad headers, a broken step) fail
their own run only."""

from __future__ import annotations

import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg.types.json import Json, Jsonb

from dbt_durable.graph.build import compile_flow
from dbt_durable.store.runs import build_run_params, new_run_params
from tests.security.conftest import Tenants, wait_for


def create_run(t: Tenants, who: str, params: dict[str, Any]) -> str:
    """A run created by ``who`` through create_run with exactly these parameters."""
    with t.connect(who) as conn:
        row = conn.execute(t.client(who).q.create_run, params).fetchone()
        assert row is not None
        conn.execute("SELECT pg_notify('dbt_durable_wake', '')")
        return str(row[0])


def test_a_forged_plan_with_b_flow_and_hash_runs_only_as_its_own_run(tenants: Tenants) -> None:
    t = tenants
    # Unqualified: the table is the login's own (its search_path), so the effect shows who ran it.
    b_text = "'INSERT INTO seen(label) VALUES (''b real flow'')'"
    b_flow = compile_flow(b_text)
    forged = new_run_params(b_flow, "adhoc", None, {})
    forged["plan"] = Json({"version": 1, "root": "INSERT INTO seen(label) VALUES ('forged plan')"})
    w = t.worker("a", "b", once=False)
    first_b = t.client("b").start(b_text, wait=False).run_id
    wait_for(lambda: t.status(first_b) == "completed", what="b's first run")
    a_run = create_run(t, "a", forged)
    wait_for(lambda: t.status(a_run) == "completed", what="a's forged run")
    second_b = t.client("b").start(b_text, wait=False).run_id
    wait_for(lambda: t.status(second_b) == "completed", what="b's second run")
    w.popen.send_signal(signal.SIGTERM)
    assert w.wait(20) == 0, w.output()
    # The forged plan ran as a, on a's table, and never as b's flow; b ran its real flow twice.
    assert t.admin("SELECT label, sess FROM {a}.seen") == [("forged plan", t.role("a"))]
    assert t.admin("SELECT label, sess FROM {b}.seen ORDER BY at") == [
        ("b real flow", t.role("b")),
        ("b real flow", t.role("b")),
    ]


@pytest.mark.parametrize(
    "plan",
    [
        {"version": 1, "root": {"kind": "no such kind"}},
        {"version": 1, "root": {"kind": "seq"}},
        {"version": 1, "root": {"kind": "as", "body": "SELECT 1"}},
        {"version": 1},
    ],
    ids=["unknown-kind", "missing-items", "missing-name", "missing-root"],
)
def test_a_plan_that_does_not_decode_fails_its_run_not_the_worker(tenants: Tenants, plan: Any) -> None:
    t = tenants
    params = new_run_params(compile_flow("'SELECT 1'"), "bad_plan", None, {})
    params["plan"] = Json(plan)
    bad = create_run(t, "a", params)
    good = t.client("a").start("'SELECT 2 AS n'", wait=False).run_id
    t.run_worker("a")
    assert t.client("a").result(good)["rows"] == [{"n": 2}]
    assert t.status(bad) == "failed"


@pytest.fixture
def dbt_folders() -> Iterator[tuple[Path, Path]]:
    """(served, evil): two folders that look like dbt projects; dbt writes logs/ into any
    project it starts in, which is how the test sees that dbt never started."""
    root = Path(tempfile.mkdtemp(prefix="dd-sec-dbt-"))
    out = []
    for name in ("served", "evil"):
        folder = root / name
        folder.mkdir()
        (folder / "dbt_project.yml").write_text(f'name: {name}\nversion: "1.0"\nprofile: {name}\n')
        (folder / "profiles.yml").write_text(
            f"{name}:\n  target: dev\n  outputs:\n    dev:\n      type: postgres\n      host: /nonexistent\n"
            "      user: x\n      password: x\n      dbname: x\n      schema: x\n      port: 5432\n      threads: 1\n"
        )
        out.append(folder)
    (out[0] / "escape").symlink_to(out[1])
    yield out[0], out[1]
    for folder in out:
        for path in sorted(folder.rglob("*"), reverse=True):
            path.unlink() if not path.is_dir() or path.is_symlink() else path.rmdir()
        folder.rmdir()
    root.rmdir()


def test_an_injected_dbt_build_runs_no_dbt_and_fails(
    tenants: Tenants, dbt_folders: tuple[Path, Path]
) -> None:
    t = tenants
    served, evil = dbt_folders
    s, e = str(served), str(evil)
    targets: dict[str, dict[str, Any]] = {
        "unserved_project": {"project_dir": e, "args": ["--select", "x"]},
        "traversal": {"project_dir": f"{s}/../evil", "args": []},
        "symlink": {"project_dir": f"{s}/escape", "args": []},
        "profiles_dir_arg": {"project_dir": s, "args": ["--profiles-dir", e]},
        "profiles_dir_eq": {"project_dir": s, "args": [f"--profiles-dir={e}"]},
        "project_dir_arg": {"project_dir": s, "args": ["--project-dir", e]},
        "profiles_dir_field": {"project_dir": s, "profiles_dir": e, "args": []},
        "target_path": {"project_dir": s, "args": ["--select", "x", "--target-path", e]},
        "log_path": {"project_dir": s, "args": ["--log-path", e]},
        "double_dash": {"project_dir": s, "args": ["--", "--profiles-dir", e]},
        "short_flag": {"project_dir": s, "args": ["-x", "-s", "x", "--debug"]},
        "args_string": {"project_dir": s, "args": f"--profiles-dir {e}"},
        "args_not_strings": {"project_dir": s, "args": [["--profiles-dir", e]]},
        "target_flag": {"project_dir": s, "target": "--profiles-dir", "args": []},
        "no_project": {"args": []},
        "project_not_string": {"project_dir": [s], "args": []},
    }

    def start(target: dict[str, Any], label: str) -> Callable[[], str]:
        params = build_run_params(f"build:{label}", None, {"kind": "dbt_build", **target}, {})
        params["dbt_args"] = Jsonb({"kind": "dbt_build", **target})
        return lambda: create_run(t, "a", params)

    starts = {label: start(target, label) for label, target in targets.items()}
    runs = t.run_in_batches(starts, "a", extra=("--dbt-project", s), timeout=90)
    assert {label: t.status(r) for label, r in runs.items()} == {label: "failed" for label in targets}
    assert all(t.run_row(r)["error"] for r in runs.values())
    for folder in (served, evil):
        made = sorted(p.name for p in folder.iterdir())
        assert made == sorted(["dbt_project.yml", "profiles.yml", *(["escape"] if folder == served else [])])


def test_deep_json_and_a_non_ascii_header_fail_their_runs_and_the_worker_lives_on(tenants: Tenants) -> None:
    t = tenants
    a = t.client("a")
    w = t.worker("a", "b", once=False, env={"DBT_DURABLE_HTTP_ALLOW": "127.0.0.1"})
    deep = a.start("'SELECT (repeat(''['', 3000) || repeat('']'', 3000))::jsonb AS j'", wait=False).run_id
    header = a.start(
        """http('http://127.0.0.1:9/x', 'GET', null, '{"X-Name": "h\u00e9llo \u2603"}') with (retries=0)""",
        wait=False,
    ).run_id
    bound = a.start(
        "'SELECT (repeat(''{\"a\":'', 3000) || ''1'' || repeat(''}'', 3000))::jsonb AS j' |=> 'x' "
        "~> 'SELECT $x AS again'",
        wait=False,
    ).run_id
    bad = [deep, header, bound]
    wait_for(lambda: all(t.status(r) in ("failed", "completed") for r in bad), timeout=30, what="bad runs")
    statuses = {r: t.status(r) for r in bad}
    good = t.client("b").start("'SELECT 3 AS n'", wait=False).run_id
    also = a.start("'SELECT 4 AS n'", wait=False).run_id
    wait_for(lambda: t.status(good) == "completed" and t.status(also) == "completed", what="good runs")
    assert w.popen.poll() is None  # still serving
    w.popen.send_signal(signal.SIGTERM)
    assert w.wait(20) == 0, w.output()
    assert statuses == {deep: "failed", header: "failed", bound: "failed"}
    assert all(t.run_row(r)["error"] for r in bad)
    assert t.client("b").result(good)["rows"] == [{"n": 3}]


def broken_second_step(t: Tenants) -> str:
    t.query("a", "CREATE SEQUENCE {a}.s")
    t.query("a", "CREATE TABLE {a}.t (n bigint)")
    run_id = (
        t.client("a").start("'INSERT INTO t VALUES (nextval(''s''))' ~> 'SELEC broken'", wait=False).run_id
    )
    t.run_worker("a")
    return run_id


def test_a_broken_second_step_fails_there_and_the_first_step_committed_once(tenants: Tenants) -> None:
    t = tenants
    a = t.client("a")
    run_id = broken_second_step(t)
    row = t.run_row(run_id)
    assert row["status"] == "failed"
    nodes = {n["exec_key"]: n["status"] for n in a.nodes(run_id)}
    assert nodes == {"0.0": "completed", "0.1": "failed"}
    assert row["failed_node"] == "0.1"
    assert t.admin("SELECT count(*) FROM {a}.t") == [(1,)]
    assert t.admin(
        "SELECT exec_key, count(*) FROM {state}.events WHERE run_id = %s AND kind = 'node_failed' GROUP BY 1",
        (run_id,),
    ) == [("0.1", 1)]
    # Resuming retries only the broken step: the insert is still there once.
    a.resume(run_id)
    assert t.admin("SELECT count(*) FROM {a}.t") == [(1,)]


def test_a_broken_second_step_runs_the_first_steps_sql_exactly_once(tenants: Tenants) -> None:
    t = tenants
    broken_second_step(t)
    assert t.admin("SELECT n FROM {a}.t") == [(1,)]
    assert t.admin("SELECT last_value, is_called FROM {a}.s") == [(1, True)]
