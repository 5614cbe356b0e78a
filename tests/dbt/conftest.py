"""dbt end-to-end fixtures: a copy of example_project wired to the test Postgres, run with a
subprocess ``dbt`` (a nested dbtRunner would share the test process's state)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from dbt_durable.demo import _dbt, _env, example_project_source
from dbt_durable.embed.process import LocalEndpoint
from tests.conftest import Space
from tests.embed.fixtures import embed_endpoint, wire  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parents[2]


@dataclass
class DbtProject:
    path: Path
    env: dict[str, str]
    schema: str  # the dbt target schema; models land in <schema>_shop
    space: Space

    def dbt(
        self, *args: str, fault: str | None = None, timeout: float = 240
    ) -> subprocess.CompletedProcess[str]:
        env = dict(self.env, DBT_DURABLE_FAULT=fault) if fault else self.env
        cmd = _dbt() + list(args) + ["--project-dir", str(self.path), "--profiles-dir", str(self.path)]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=self.path, timeout=timeout)

    def query(self, text: str) -> list[tuple[Any, ...]]:
        text = text.replace("{shop}", f"{self.schema}_shop").replace("{state}", self.space.schema)
        return self.space.query(text)


def _has_pgvector(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return (
            conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone() is not None
        )


def make_project(space: Space, source: Path) -> Iterator[DbtProject]:
    folder = Path(tempfile.mkdtemp(prefix="dbt-durable-project-"))
    project = folder / "project"
    shutil.copytree(
        source, project, ignore=shutil.ignore_patterns("__init__.py", "__pycache__", "target", "logs")
    )
    schema = f"dd_t_{secrets.token_hex(4)}"
    env = _env(space.admin_dsn)
    env.update(DBT_DURABLE_SCHEMA=space.schema, DBT_DURABLE_TARGET_SCHEMA=schema)
    try:
        yield DbtProject(project, env, schema, space)
    finally:
        with psycopg.connect(space.admin_dsn, autocommit=True) as conn:
            for name in (schema, f"{schema}_shop", f"{schema}_raw"):
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def example(space: Space, embed_endpoint: LocalEndpoint) -> Iterator[DbtProject]:  # noqa: F811
    if not _has_pgvector(space.admin_dsn):
        pytest.skip("the example project needs pgvector (the embedded test server has it)")
    for project in make_project(space, example_project_source()):
        wire(project.env, embed_endpoint)  # the embedding model calls the local endpoint
        yield project


@pytest.fixture
def tiny(space: Space) -> Iterator[DbtProject]:
    """A small project of our own, for error cases."""
    source = Path(tempfile.mkdtemp(prefix="dbt-durable-tiny-"))
    (source / "models").mkdir()
    shutil.copy(example_project_source() / "profiles.yml", source / "profiles.yml")
    (source / "dbt_project.yml").write_text(
        "name: tiny\nversion: '1.0'\nconfig-version: 2\nprofile: dbt_durable_example\n"
    )
    try:
        yield from make_project(space, source)
    finally:
        shutil.rmtree(source, ignore_errors=True)


def write_model(project: DbtProject, name: str, body: str) -> None:
    (project.path / "models" / f"{name}.sql").write_text(body)


os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
