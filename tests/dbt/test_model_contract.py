"""Durable models keep dbt's model contract (issue #11, docs/dbt.md).

One project serves the whole module (dbt invocations are slow); each test uses models of its
own, selected by name. The profile has two targets, dev and prod, in one database.
"""

from __future__ import annotations

import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from dbt_durable.demo import _dbt, _env
from tests.conftest import Space, make_space

PROFILE = """
contract:
  target: dev
  outputs:
    dev: &dev
      type: durable
      host: "{{ env_var('DBT_DURABLE_PGHOST') }}"
      port: "{{ env_var('DBT_DURABLE_PGPORT') | as_number }}"
      user: "{{ env_var('DBT_DURABLE_PGUSER') }}"
      password: "{{ env_var('DBT_DURABLE_PGPASSWORD', '') }}"
      dbname: "{{ env_var('DBT_DURABLE_PGDATABASE') }}"
      schema: "{{ env_var('DBT_DURABLE_TARGET_SCHEMA') }}_dev"
      threads: 2
      durable_schema: "{{ env_var('DBT_DURABLE_SCHEMA') }}"
    prod:
      <<: *dev
      schema: "{{ env_var('DBT_DURABLE_TARGET_SCHEMA') }}_prod"
"""

COPY = """{{ config(materialized='durable') }}
{% call dbt_durable.flow() %}
'CREATE TABLE IF NOT EXISTS {{ this }} (LIKE {{ var('raw') }}.orders)'
~> {{ dbt_durable.batched(var('raw') ~ '.orders', 'id', 4,
       'INSERT INTO ' ~ this ~ ' SELECT * FROM ' ~ var('raw') ~ '.orders WHERE __batch__') }}
{% endcall %}
"""


class Project:
    def __init__(self, path: Path, env: dict[str, str], base: str, space: Space):
        self.path, self.env, self.base, self.space = path, env, base, space
        self.raw = f"{base}_raw"

    def dbt(
        self, *args: str, target: str = "dev", env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = _dbt() + list(args) + ["--target", target, "--vars", f"{{raw: {self.raw}}}"]
        if "--vars" in args:  # the test gives its own vars: add raw to them
            i = args.index("--vars")
            merged = args[i + 1].rstrip("} ").lstrip("{ ")
            cmd = _dbt() + list(args[:i]) + list(args[i + 2 :]) + ["--target", target]
            cmd += ["--vars", "{raw: " + self.raw + (", " + merged if merged else "") + "}"]
        cmd += ["--project-dir", str(self.path), "--profiles-dir", str(self.path)]
        return subprocess.run(
            cmd, env=env or self.env, capture_output=True, text=True, cwd=self.path, timeout=300
        )

    def ok(self, *args: str, target: str = "dev") -> str:
        done = self.dbt(*args, target=target)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        return done.stdout

    def model(self, name: str, body: str) -> None:
        (self.path / "models" / f"{name}.sql").write_text(body)

    def query(self, text: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        text = text.replace("{dev}", f"{self.base}_dev").replace("{prod}", f"{self.base}_prod")
        return self.space.query(text.replace("{raw}", self.raw), params)

    def exists(self, schema: str, name: str) -> bool:
        return bool(self.query("SELECT to_regclass(%s) IS NOT NULL", (f"{schema}.{name}",))[0][0])


@pytest.fixture(scope="module")
def project(pg_dsn: str) -> Iterator[Project]:
    with make_space(pg_dsn) as space:
        folder = Path(tempfile.mkdtemp(prefix="dbt-durable-contract-"))
        (folder / "models").mkdir()
        (folder / "profiles.yml").write_text(PROFILE)
        (folder / "dbt_project.yml").write_text(
            "name: contract\nversion: '1.0'\nconfig-version: 2\nprofile: contract\n"
        )
        base = f"dd_c_{secrets.token_hex(4)}"
        env = _env(space.admin_dsn)
        env.update(DBT_DURABLE_SCHEMA=space.schema, DBT_DURABLE_TARGET_SCHEMA=base)
        p = Project(folder, env, base, space)
        p.query(f"CREATE SCHEMA {p.raw}")
        p.query(
            f"CREATE TABLE {p.raw}.orders AS SELECT g AS id, g * 10 AS amount FROM generate_series(1, 10) g"
        )
        p.query(f"CREATE TABLE {p.raw}.gate (open int)")
        try:
            yield p
        finally:
            with psycopg.connect(space.admin_dsn, autocommit=True) as conn:
                for name in (f"{base}_dev", f"{base}_prod", p.raw):
                    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
            shutil.rmtree(folder, ignore_errors=True)


def runs(project: Project, relation_like: str) -> list[tuple[Any, ...]]:
    if not project.query("SELECT to_regclass('{state}.runs') IS NOT NULL")[0][0]:
        return []
    return project.query(
        "SELECT run_id::text, status, run_key FROM {state}.runs WHERE flow_name LIKE %s ORDER BY created_at",
        (relation_like,),
    )


def test_rerun_gives_the_same_table_full_refresh_rebuilds_and_a_dropped_relation_is_rebuilt(
    project: Project,
) -> None:
    project.model("copy", COPY)
    first = project.ok("run", "--select", "copy")
    assert "DURABLE ran run" in first
    assert project.query("SELECT count(*), sum(amount) FROM {dev}.copy") == [(10, 550)]
    project.ok("run", "--select", "copy")
    assert project.query("SELECT count(*) FROM {dev}.copy") == [(10,)]  # not 20
    project.ok("run", "--select", "copy", "--full-refresh")
    assert project.query("SELECT count(*) FROM {dev}.copy") == [(10,)]
    assert not project.exists(f"{project.base}_dev", "copy__dbt_durable")  # the shadow was swapped in
    project.query("DROP TABLE {dev}.copy")
    project.ok("run", "--select", "copy")
    assert project.query("SELECT count(*) FROM {dev}.copy") == [(10,)]
    # dbt show shows the model's relation (not the flow text sent as SQL).
    shown = project.ok("show", "--select", "copy", "--limit", "3")
    assert re.search(r"\bid\b.*\bamount\b", shown), shown[-1500:]


def test_two_targets_in_one_database_have_their_own_runs(project: Project) -> None:
    project.model("gated", GATED)
    project.query("DELETE FROM {raw}.gate")
    failed_prod = project.dbt("run", "--select", "gated", target="prod")
    assert failed_prod.returncode == 1
    # A failed prod run neither blocks nor is touched by dev, even with durable_fresh.
    project.query("INSERT INTO {raw}.gate VALUES (1)")
    project.ok("run", "--select", "gated", "--vars", "{durable_fresh: true}", target="dev")
    prod_runs = runs(project, f'%"{project.base}_prod"."gated"')
    dev_runs = runs(project, f'%"{project.base}_dev"."gated"')
    assert [r[1] for r in prod_runs] == ["failed"] and [r[1] for r in dev_runs] == ["completed"]
    resumed = project.ok("run", "--select", "gated", target="prod")
    assert "DURABLE resumed run" in resumed and "1 skipped" in resumed
    assert project.query("SELECT count(*) FROM {prod}.gated") == [(1,)]


GATED = """{{ config(materialized='durable') }}
{% call dbt_durable.flow() %}
'CREATE TABLE {{ this }} (step text)'
~> 'SELECT 1 / count(*) FROM {{ var("raw") }}.gate'
~> 'INSERT INTO {{ this }} VALUES (''done'')'
{% endcall %}
"""


def test_fix_and_rerun_keeps_the_completed_prefix_and_cancel_ends_a_failed_run(project: Project) -> None:
    body = GATED.replace("gate'", "gate WHERE open = 2'")
    project.model("fixme", body)
    project.query("DELETE FROM {raw}.gate")
    project.query("INSERT INTO {raw}.gate VALUES (1)")
    failed = project.dbt("run", "--select", "fixme")
    assert failed.returncode == 1
    # The step is named by its source line, with its SQL, and the error says re-running won't help.
    assert "models/fixme.sql:4:4: SELECT 1 / count(*)" in failed.stdout, failed.stdout[-3000:]
    assert "SQLSTATE 22012 is deterministic" in failed.stdout
    project.model("fixme", GATED)  # the fix: only the failed step changed
    fixed = project.ok("run", "--select", "fixme")
    assert "continued run" in fixed and "keeping 1 completed node(s) (models/fixme.sql:3:1" in fixed, fixed[
        -2000:
    ]
    assert project.query("SELECT step FROM {dev}.fixme") == [("done",)]
    assert [r[1] for r in runs(project, '%"fixme"')] == ["completed"]

    # A changed completed step is refused, naming it and what a fresh start redoes.
    project.query("DELETE FROM {raw}.gate")
    project.model("fixme", body)
    assert project.dbt("run", "--select", "fixme").returncode == 1
    project.model("fixme", body.replace("(step text)", "(step text, n int)"))
    changed = project.dbt("run", "--select", "fixme")
    assert changed.returncode == 1
    assert "these completed steps changed: models/fixme.sql:3:1" in changed.stdout, changed.stdout[-2000:]
    assert "--full-refresh" in changed.stdout

    # The failed run can be cancelled, from dbt; the table keeps its last complete version.
    cancelled = project.ok("run-operation", "durable_cancel", "--args", "{select: fixme}")
    assert ": cancelled" in cancelled
    assert runs(project, '%"fixme"')[-1][1] == "cancelled"
    assert project.query("SELECT step FROM {dev}.fixme") == [("done",)]


def test_empty_changes_nothing_and_compile_names_source_lines(project: Project) -> None:
    project.model("emptied", COPY)
    out = project.ok("run", "--select", "emptied", "--empty")
    assert "--empty runs no flow" in out
    assert not project.exists(f"{project.base}_dev", "emptied")
    assert runs(project, '%"emptied"') == []
    # A syntax error after a multi-line macro expansion is reported at its source line.
    project.model(
        "broken",
        COPY.replace("{% endcall %}", "~> nope('x')\n{% endcall %}"),
    )
    try:
        for command in (["compile", "--select", "broken"], ["parse"]):
            done = project.dbt(*command)
            assert done.returncode != 0
            assert "models/broken.sql:6:4: unknown function 'nope'" in done.stdout, done.stdout[-2000:]
    finally:
        (project.path / "models" / "broken.sql").unlink()


def test_durable_key_is_a_logical_identity(project: Project) -> None:
    project.model(
        "daily",
        """{{ config(materialized='durable', durable_key=var('ds')) }}
{% call dbt_durable.flow() %}
'CREATE TABLE {{ this }} AS SELECT ''{{ var("ds") }}''::text AS ds'
{% endcall %}
""",
    )
    assert "DURABLE ran" in project.ok("run", "--select", "daily", "--vars", "{ds: '2026-01-01'}")
    again = project.ok("run", "--select", "daily", "--vars", "{ds: '2026-01-01'}")
    assert "already completed" in again
    project.ok("run", "--select", "daily", "--vars", "{ds: '2026-01-02'}")
    assert project.query("SELECT ds FROM {dev}.daily") == [("2026-01-02",)]
    assert sorted(r[2] for r in runs(project, '%"daily"')) == ["2026-01-01", "2026-01-02"]


def test_a_parked_model_warns_and_downstream_sees_the_last_complete_version(project: Project) -> None:
    project.model("first_ok", COPY)
    project.ok("run", "--select", "first_ok")
    project.model(
        "first_ok",
        COPY.replace("{% endcall %}", "~> wait_for_signal('go')\n{% endcall %}").replace(
            "materialized='durable'", "materialized='durable', durable_park_after=0"
        ),
    )
    project.query("INSERT INTO {raw}.orders VALUES (11, 110)")
    try:
        out = project.ok("run", "--select", "first_ok")
        assert "parked" in out and "WARNING" in out, out[-2000:]
        assert project.query("SELECT count(*) FROM {dev}.first_ok") == [(10,)]  # the last complete version
    finally:
        project.query("DELETE FROM {raw}.orders WHERE id = 11")


def test_a_worker_running_during_dbt_run_never_takes_its_runs(project: Project) -> None:
    project.model("busy", GATED.replace("SELECT 1 / count(*)", "SELECT pg_sleep(0.5), 1 / count(*)"))
    project.query("DELETE FROM {raw}.gate")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dbt_durable",
            "--dsn",
            project.space.admin_dsn,
            "--schema",
            project.space.schema,
            "worker",
            "--poll",
            "0.2",
        ],
        env=project.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(1.0)
        assert worker.poll() is None, worker.stderr.read().decode() if worker.stderr else ""
        failed = project.dbt("run", "--select", "busy")
        assert failed.returncode == 1
        project.query("INSERT INTO {raw}.gate VALUES (1)")
        time.sleep(1.0)  # a worker that could take the failed run would have done so by now
        (run_id, status, _key) = runs(project, '%"busy"')[-1]
        assert status == "failed"
        ok = project.ok("run", "--select", "busy")
        assert "1 skipped" in ok and "1 node(s) ran" in ok or "2 node(s) ran" in ok, ok[-2000:]
        owners = project.query(
            "SELECT count(DISTINCT detail ->> 'owner') FROM {state}.events WHERE run_id = %s AND kind = 'run_claimed'",
            (run_id,),
        )
        attempts = project.query(
            "SELECT attempts FROM {state}.nodes WHERE run_id = %s AND node_id = '0.1'", (run_id,)
        )
        assert attempts == [(1,)]  # retried once, by the second dbt run only
        assert owners[0][0] <= 1
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()


def test_schedules_follow_the_project(project: Project) -> None:
    body = """{{ config(materialized='durable', durable_schedule='0 6 * * *') }}
{% call dbt_durable.flow() %}'CREATE TABLE {{ this }} AS SELECT 1 AS x'{% endcall %}
"""
    project.model("nightly", body)
    project.ok("run", "--select", "nightly")
    project.ok("run", "--select", "nightly", target="prod")
    names = [r[0] for r in project.query("SELECT name FROM {state}.schedules ORDER BY name")]
    assert len(names) == 2
    assert any(f"{project.base}_dev" in n for n in names) and any(f"{project.base}_prod" in n for n in names)
    project.model("nightly", body.replace(", durable_schedule='0 6 * * *'", ""))
    project.ok("run", "--select", "nightly")
    names = [r[0] for r in project.query("SELECT name FROM {state}.schedules")]
    assert len(names) == 1 and f"{project.base}_prod" in names[0]  # dev's went with its config; prod's stays


def _readme_block(marker: str) -> str:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    at = text.index(marker)
    start = text.rindex("```sql\n", 0, at) + len("```sql\n")
    return text[start : text.index("```", at)]


def test_the_readme_model_runs_and_reruns_to_the_same_table(project: Project) -> None:
    body = _readme_block("-- models/orders_copy.sql")
    project.model("orders_copy", body)
    (project.path / "models" / "sources.yml").write_text(
        f"version: 2\nsources:\n  - name: shop\n    schema: {project.raw}\n    tables: [{{name: orders}}]\n"
    )
    for _ in range(2):
        project.ok("run", "--select", "orders_copy")
        assert project.query("SELECT count(*) FROM {dev}.orders_copy") == [(10,)]


def test_the_readme_headline_flow_loads_every_row_once_and_ends(project: Project) -> None:
    flow = _readme_block("'SELECT coalesce(max(id), 0) AS last_id FROM staging.orders'")
    tag = project.base + "_hl"
    for schema in ("raw", "staging", "marts"):
        flow = flow.replace(f"{schema}.", f"{tag}_{schema}.")
        project.query(f"CREATE SCHEMA IF NOT EXISTS {tag}_{schema}")
    flow = flow.replace("LIMIT 5000", "LIMIT 3")
    try:
        project.query(
            f"CREATE TABLE {tag}_raw.orders AS SELECT g AS id, g * 1.5 AS amount FROM generate_series(1, 10) g"
        )
        project.query(f"CREATE TABLE {tag}_staging.orders (LIKE {tag}_raw.orders)")
        project.query(f"INSERT INTO {tag}_staging.orders SELECT * FROM {tag}_raw.orders WHERE id <= 2")
        project.query(
            f"CREATE TABLE {tag}_marts.daily_summary (at timestamptz, orders bigint, total numeric)"
        )
        started = project.space.client().start(flow, wait=True)
        assert started.outcome is not None and started.outcome.status == "completed", started.outcome
        assert project.query(f"SELECT count(*), count(DISTINCT id) FROM {tag}_staging.orders") == [(10, 10)]
        assert project.query(f"SELECT orders, total FROM {tag}_marts.daily_summary") == [(10, 82.5)]
    finally:
        for schema in ("raw", "staging", "marts"):
            project.query(f"DROP SCHEMA IF EXISTS {tag}_{schema} CASCADE")
