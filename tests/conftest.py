"""Shared fixtures: a real PostgreSQL for the whole session, and an isolated space per test.

The server is the embedded one (started in a folder of its own, as the wheel needs), unless
``DBT_DURABLE_TEST_DSN`` names another. Each test gets its own state schema and its own work
schema (set as the search_path of every connection the runner opens), so tests never collide.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import conninfo, sql

from dbt_durable.api import Client
from dbt_durable.config import Settings


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    external = os.environ.get("DBT_DURABLE_TEST_DSN")
    if external:
        yield external
        return
    from dbt_durable.embedded import embedded_database

    home = Path(tempfile.mkdtemp(prefix="dbt-durable-test-"))
    with embedded_database(home) as dsn:
        yield dsn
    shutil.rmtree(home, ignore_errors=True)


@dataclass
class Space:
    """One test's isolated state schema and work schema on the test server."""

    admin_dsn: str
    dsn: str  # search_path = the work schema
    schema: str
    work: str

    def settings(self, **kw: object) -> Settings:
        return Settings(dsn=self.dsn, schema=self.schema, **kw)  # type: ignore[arg-type]

    def client(self, **kw: object) -> Client:
        return Client(self.settings(**kw))

    def query(self, text: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(text.replace("{state}", self.schema), params or None)
            return cur.fetchall() if cur.description else []


@contextmanager
def make_space(pg_dsn: str) -> Iterator[Space]:
    """A fresh state schema and work schema, dropped afterwards."""
    tag = secrets.token_hex(4)
    schema, work = f"dd_state_{tag}", f"dd_work_{tag}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(work)))
    dsn = conninfo.make_conninfo(pg_dsn, options=f"-c search_path={work},public")
    try:
        yield Space(pg_dsn, dsn, schema, work)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            for name in (schema, work):
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def space(pg_dsn: str) -> Iterator[Space]:
    with make_space(pg_dsn) as s:
        yield s
