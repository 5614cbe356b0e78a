"""A realistic project, written here, under ``type: postgres`` and ``type: durable`` (issue #11):
seeds, staging views, an incremental model, a snapshot, tests and durable models give the same
relations with the same contents under both. The same project checks ``dbt-durable build``'s
console output against ``dbt build``'s, ``dbt retry`` after a kill -9, and ``batched`` over UUID
and text keys.

Durable models are written so that the postgres target builds the same table with a plain
``select``: ``materialized`` and the body depend on ``target.type``.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from dbt_durable.demo import _dbt, _env
from tests.conftest import Space, make_space

PROFILE = """
realistic:
  target: dd
  outputs:
    dd: &dd
      type: durable
      host: "{{ env_var('DBT_DURABLE_PGHOST') }}"
      port: "{{ env_var('DBT_DURABLE_PGPORT') | as_number }}"
      user: "{{ env_var('DBT_DURABLE_PGUSER') }}"
      password: "{{ env_var('DBT_DURABLE_PGPASSWORD', '') }}"
      dbname: "{{ env_var('DBT_DURABLE_PGDATABASE') }}"
      schema: "{{ env_var('DBT_DURABLE_TARGET_SCHEMA') }}_dd"
      threads: 2
      durable_schema: "{{ env_var('DBT_DURABLE_SCHEMA') }}"
    pg:
      type: postgres
      host: "{{ env_var('DBT_DURABLE_PGHOST') }}"
      port: "{{ env_var('DBT_DURABLE_PGPORT') | as_number }}"
      user: "{{ env_var('DBT_DURABLE_PGUSER') }}"
      password: "{{ env_var('DBT_DURABLE_PGPASSWORD', '') }}"
      dbname: "{{ env_var('DBT_DURABLE_PGDATABASE') }}"
      schema: "{{ env_var('DBT_DURABLE_TARGET_SCHEMA') }}_pg"
      threads: 2
"""

PROJECT = """name: realistic
version: '1.0'
config-version: 2
profile: realistic
seeds:
  realistic:
    customers:
      +column_types: {customer_id: uuid, name: text}
    orders:
      +column_types: {order_id: integer, customer_id: uuid, sku: text, amount: numeric, ordered_at: date}
    products:
      +column_types: {sku: text, title: text, price: numeric}
snapshots:
  realistic:
    +target_schema: "{{ target.schema }}"
"""

SCHEMA_YML = """version: 2
models:
  - name: stg_orders
    columns:
      - name: order_id
        tests: [unique, not_null]
  - name: stg_customers
    columns:
      - name: customer_id
        tests: [unique, not_null]
  - name: customer_copy
    columns:
      - name: customer_id
        tests: [unique, not_null]
  - name: product_copy
    columns:
      - name: sku
        tests: [unique]
  - name: order_facts
    columns:
      - name: customer_id
        tests:
          - relationships:
              arguments: {to: ref('stg_customers'), field: customer_id}
"""


def _customers() -> str:
    rows = ["customer_id,name"]
    for i in range(1, 21):
        rows.append(f"{i:08x}-0000-4000-8000-{i * 7919:012x},customer {i:02d}")
    return "\n".join(rows) + "\n"


def _orders() -> str:
    rows = ["order_id,customer_id,sku,amount,ordered_at"]
    for i in range(1, 121):
        c = (i * 7) % 20 + 1
        rows.append(
            f"{i},{c:08x}-0000-4000-8000-{c * 7919:012x},sku-{(i * 13) % 15:03d},"
            f"{(i * 37) % 200 + 0.5},2026-0{i % 9 + 1}-{i % 27 + 1:02d}"
        )
    return "\n".join(rows) + "\n"


def _products() -> str:
    rows = ["sku,title,price"] + [f"sku-{i:03d},product {i},{i * 3 + 0.25}" for i in range(15)]
    return "\n".join(rows) + "\n"


MODELS = {
    "staging/stg_orders.sql": "{{ config(materialized='view') }}\n"
    "select order_id, customer_id, sku, amount, ordered_at from {{ ref('orders') }}\n",
    "staging/stg_customers.sql": "{{ config(materialized='view') }}\n"
    "select customer_id, upper(name) as name from {{ ref('customers') }}\n",
    "marts/orders_incremental.sql": "{{ config(materialized='incremental', unique_key='order_id') }}\n"
    "select order_id, customer_id, amount from {{ ref('stg_orders') }}\n"
    "{% if is_incremental() %}where order_id > (select coalesce(max(order_id), 0) from {{ this }}){% endif %}\n",
    "marts/order_facts.sql": "{{ config(materialized='table') }}\n"
    "select o.customer_id, count(*) as orders, sum(o.amount) as revenue\n"
    "from {{ ref('orders_incremental') }} o group by 1\n",
    # Durable models: batched over a UUID key and over a text key, a plain table under postgres.
    "durable/customer_copy.sql": """{{ config(materialized='durable' if target.type == 'durable' else 'table') }}
{% if target.type == 'durable' %}
{% call dbt_durable.flow() %}
'CREATE TABLE {{ this }} AS SELECT * FROM {{ ref("stg_customers") }} WITH NO DATA'
~> {{ dbt_durable.batched(ref('stg_customers'), 'customer_id', 3,
       'INSERT INTO ' ~ this ~ ' SELECT * FROM ' ~ ref('stg_customers') ~ ' WHERE __batch__') }}
{% endcall %}
{% else %}
select * from {{ ref('stg_customers') }}
{% endif %}
""",
    "durable/product_copy.sql": """{{ config(materialized='durable' if target.type == 'durable' else 'table') }}
{% if target.type == 'durable' %}
{% call dbt_durable.flow() %}
'CREATE TABLE {{ this }} AS SELECT sku, title, price FROM {{ ref("products") }} WITH NO DATA'
~> {{ dbt_durable.batched(ref('products'), 'sku', 4,
       'INSERT INTO ' ~ this ~ ' SELECT sku, title, price FROM ' ~ ref('products') ~ ' WHERE __batch__',
       name='sku_batch') }}
{% endcall %}
{% else %}
select sku, title, price from {{ ref('products') }}
{% endif %}
""",
    "durable/customer_revenue.sql": """{{ config(materialized='durable' if target.type == 'durable' else 'table') }}
{% if target.type == 'durable' %}
{% call dbt_durable.flow() %}
'CREATE TABLE {{ this }} (customer_id uuid, name text, revenue numeric)'
~> 'INSERT INTO {{ this }} SELECT c.customer_id, c.name, f.revenue
    FROM {{ ref("customer_copy") }} c JOIN {{ ref("order_facts") }} f USING (customer_id)'
{% endcall %}
{% else %}
select c.customer_id, c.name, f.revenue
from {{ ref('customer_copy') }} c join {{ ref('order_facts') }} f using (customer_id)
{% endif %}
""",
}

SNAPSHOT = """{% snapshot products_snapshot %}
{{ config(unique_key='sku', strategy='check', check_cols=['price']) }}
select * from {{ ref('products') }}
{% endsnapshot %}
"""

NODES = 5 + 4 + 3 + 1 + 8  # seeds... : 3 seeds, 4 plain models, 3 durable, 1 snapshot, 8 tests


class Project:
    def __init__(self, path: Path, env: dict[str, str], base: str, space: Space):
        self.path, self.env, self.base, self.space = path, env, base, space

    def run(self, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        cmd = cmd + ["--project-dir", str(self.path), "--profiles-dir", str(self.path)]
        return subprocess.run(
            cmd, env=env or self.env, capture_output=True, text=True, cwd=self.path, timeout=300
        )

    def dbt(self, *args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
        env = dict(self.env, DBT_DURABLE_FAULT=fault) if fault else self.env
        return self.run(_dbt() + list(args), env)

    def ok(self, *args: str) -> str:
        done = self.dbt(*args)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        return done.stdout

    def durable_build(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "dbt_durable", "build", *args]
        return subprocess.run(
            cmd + ["--project-dir", str(self.path), "--profiles-dir", str(self.path)],
            env=self.env,
            capture_output=True,
            text=True,
            cwd=self.path,
            timeout=300,
        )

    def query(self, text: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        return self.space.query(text, params)

    def relations(self, schema: str) -> dict[str, str]:
        rows = self.query(
            "SELECT c.relname, c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'v', 'm')",
            (schema,),
        )
        return {str(name): str(kind) for name, kind in rows}

    def contents(self, schema: str, name: str) -> tuple[object, ...]:
        """Row count and a digest of the rows (dbt's snapshot metadata columns left out)."""
        cols = [
            str(r[0])
            for r in self.query(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
                "AND NOT attisdropped AND attname NOT LIKE 'dbt\\_%%' ORDER BY attname",
                (f'"{schema}"."{name}"',),
            )
        ]
        row = sql.SQL("ROW({})::text").format(sql.SQL(", ").join(map(sql.Identifier, cols)))
        query = sql.SQL(
            "SELECT count(*), md5(coalesce(string_agg({r}, '|' ORDER BY {r}), '')) FROM {s}.{t}"
        ).format(r=row, s=sql.Identifier(schema), t=sql.Identifier(name))
        with psycopg.connect(self.space.admin_dsn, autocommit=True) as conn:
            found = conn.execute(query).fetchone()
        assert found is not None
        return tuple(found)


@pytest.fixture(scope="module")
def project(pg_dsn: str) -> Iterator[Project]:
    with make_space(pg_dsn) as space:
        folder = Path(tempfile.mkdtemp(prefix="dbt-durable-realistic-"))
        for sub in ("models/staging", "models/marts", "models/durable", "seeds", "snapshots"):
            (folder / sub).mkdir(parents=True)
        (folder / "profiles.yml").write_text(PROFILE)
        (folder / "dbt_project.yml").write_text(PROJECT)
        (folder / "models" / "schema.yml").write_text(SCHEMA_YML)
        (folder / "seeds" / "customers.csv").write_text(_customers())
        (folder / "seeds" / "orders.csv").write_text(_orders())
        (folder / "seeds" / "products.csv").write_text(_products())
        (folder / "snapshots" / "products_snapshot.sql").write_text(SNAPSHOT)
        for name, body in MODELS.items():
            (folder / "models" / name).write_text(body)
        base = f"dd_r_{secrets.token_hex(4)}"
        env = _env(space.admin_dsn)
        env.update(DBT_DURABLE_SCHEMA=space.schema, DBT_DURABLE_TARGET_SCHEMA=base)
        try:
            yield Project(folder, env, base, space)
        finally:
            with psycopg.connect(space.admin_dsn, autocommit=True) as conn:
                for name in (f"{base}_dd", f"{base}_pg"):
                    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
            shutil.rmtree(folder, ignore_errors=True)


def _summary(out: str) -> str:
    """dbt's ``Done. PASS=... TOTAL=...`` line, without its prefix."""
    line = next(x for x in out.splitlines() if "Done. PASS=" in x)
    return line[line.index("Done.") :]


def test_postgres_and_durable_targets_build_the_same_relations(project: Project) -> None:
    pg = project.ok("build", "--target", "pg")
    dd = project.ok("build", "--target", "dd")
    assert _summary(pg) == _summary(dd)
    assert "ERROR=0" in _summary(dd) and "SKIP=0" in _summary(dd)
    pg_rel, dd_rel = project.relations(f"{project.base}_pg"), project.relations(f"{project.base}_dd")
    assert pg_rel == dd_rel, (pg_rel, dd_rel)
    assert {
        "customer_copy",
        "product_copy",
        "customer_revenue",
        "orders_incremental",
        "products_snapshot",
    } <= set(dd_rel)
    assert not any(name.endswith("__dbt_durable") for name in dd_rel)  # shadows swapped in
    for name in sorted(pg_rel):
        assert project.contents(f"{project.base}_pg", name) == project.contents(f"{project.base}_dd", name), (
            name
        )
    assert project.contents(f"{project.base}_dd", "customer_copy")[0] == 20
    # batched walked the UUID key 3 rows and the text key 4 rows at a time: 7 and 4 batches.
    keys = {
        str(name): str(found)
        for name, found in project.query(
            "SELECT split_part(r.flow_name, '.', 3), string_agg(n.exec_key, ' ' ORDER BY n.exec_key) "
            "FROM {state}.nodes n JOIN {state}.runs r USING (run_id) WHERE r.kind <> 'dbt_build' GROUP BY 1"
        )
    }
    batches = {name: len(re.findall(r"\b0\.3\.0\.0#", k)) for name, k in keys.items()}
    assert batches == {'"customer_copy"': 7, '"product_copy"': 4, '"customer_revenue"': 0}, keys
    # Built again, the same relations hold the same rows (the incremental model adds nothing).
    project.ok("build", "--target", "dd")
    for name in sorted(pg_rel):
        assert project.contents(f"{project.base}_pg", name) == project.contents(f"{project.base}_dd", name), (
            name
        )


def test_batched_refuses_a_key_that_cannot_be_ordered(project: Project) -> None:
    path = project.path / "models" / "durable" / "unordered.sql"
    path.write_text(
        "{{ config(materialized='durable') }}\n{% call dbt_durable.flow() %}\n"
        "'CREATE TABLE {{ this }} (doc json)'\n"
        "~> {{ dbt_durable.batched(\"(SELECT '{}'::json AS doc)\", 'doc', 2, "
        "'INSERT INTO ' ~ this ~ ' SELECT 1 WHERE __batch__') }}\n{% endcall %}\n"
    )
    try:
        out = project.dbt("run", "--target", "dd", "--select", "unordered")
        assert out.returncode != 0
        assert "dbt_durable.batched" in out.stdout and "orderable" in out.stdout, out.stdout[-3000:]
    finally:
        path.unlink()


def test_durable_build_prints_what_dbt_build_prints(project: Project) -> None:
    plain = project.ok("build", "--target", "dd")
    durable = project.durable_build("--target", "dd")
    assert durable.returncode == 0, durable.stderr[-3000:]
    console = durable.stderr
    assert _summary(console) == _summary(plain)  # dbt's own summary: same node count
    total = int(re.search(r"TOTAL=(\d+)", _summary(plain)).group(1))  # type: ignore[union-attr]
    assert f": {total} node(s) built" in console
    assert "Running with dbt=" in console and "Finished running" in console
    assert "[debug]" not in console and "Sending event" not in console  # debug only in logs/dbt.log

    def node_lines(
        out: str,
    ) -> list[str]:  # "START ...", "OK ...", unnumbered (threads), without [RUN]/[OK in 0.1s]
        found = (re.sub(r"\x1b\[[0-9;]*m", "", x) for x in out.splitlines() if re.search(r" \d+ of \d+ ", x))
        # dbt pads each line with dots to a width that depends on the node number's digits.
        return sorted(re.sub(r" \.+ ?$", "", re.sub(r"^\S+\s+\d+ of \d+ | \[.*$", "", x)) for x in found)

    assert node_lines(console) == node_lines(plain)
    assert len(node_lines(console)) == 2 * total
    assert (project.path / "logs" / "dbt.log").stat().st_size > 0


def test_dbt_retry_after_kill_9_reruns_only_what_had_not_finished(project: Project) -> None:
    flow = f'"{project.env.get("DBT_DURABLE_PGDATABASE", "postgres")}"."{project.base}_dd"."customer_copy"'
    project.ok(
        "run", "--target", "dd", "--select", "customer_copy", "--full-refresh"
    )  # a completed run: the build starts a new one
    killed = project.dbt("build", "--target", "dd", "--threads", "1", fault=f"after_commit@0.3.0.0#1@{flow}")
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:]
    results = json.loads((project.path / "target" / "run_results.json").read_text())
    status = {r["unique_id"]: r["status"] for r in results["results"]}
    assert results["args"]["which"] == "build"
    assert status["model.realistic.customer_copy"] == "skipped"  # killed while running
    assert status["model.realistic.customer_revenue"] == "skipped"  # never started
    done_before = {uid for uid, s in status.items() if s in ("success", "pass")}
    assert "seed.realistic.customers" in done_before and "model.realistic.stg_customers" in done_before
    retried = project.dbt("retry")
    assert retried.returncode == 0, retried.stdout[-3000:]
    names = set(re.findall(r" START .*? (?:\S+\.)?(\w+) \.+ \[RUN\]", retried.stdout))
    assert "customer_copy" in names and "customer_revenue" in names
    assert not names & {uid.split(".")[2] for uid in done_before}, retried.stdout[-3000:]
    assert "resumed run" in retried.stdout  # the durable model resumed its killed run
    assert project.contents(f"{project.base}_dd", "customer_copy")[0] == 20
    assert project.query(
        "SELECT count(*) FROM {state}.runs WHERE flow_name = %s AND status = 'completed'", (flow,)
    ) >= [(2,)]
