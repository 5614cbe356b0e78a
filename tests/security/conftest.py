"""Real roles for the adversarial tests; no actor is a superuser.

* ``owner`` owns the state schema: it has CREATE on the database and runs the migrations.
* ``worker`` is a plain login granted usage; workers log in as it and serve other logins.
* ``a`` and ``b`` (analysts) are granted usage; each has a private schema (its DSN's
  search_path) holding a ``secret`` table that the other cannot read, and a ``seen`` table
  where steps record what they observed.
* ``outsider`` has no grants at all.

The embedded server's admin DSN (a superuser) is used only to create and drop roles and
schemas and to grant CREATE; every attack runs on the attacker's own login.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import psycopg
import pytest
from psycopg import conninfo, sql

from dbt_durable.api import Client
from dbt_durable.config import Settings
from dbt_durable.runner.worker import Worker, WorkerStats
from tests.conftest import Space

ANALYSTS = ("a", "b")
BATCH = 5  # runs of one login per worker process
ROLES = ("owner", "worker", "a", "b", "outsider")
# What a step records: who ran it, and what its session looked like.
SEEN_COLUMNS = (
    "label text, sess text DEFAULT session_user, cur text DEFAULT current_user, "
    "pid int DEFAULT pg_backend_pid(), path text DEFAULT current_setting('search_path'), "
    "note text, at timestamptz DEFAULT clock_timestamp()"
)


def wait_for(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached in {timeout}s")


@dataclass
class Proc:
    """A dbt-durable subprocess whose output goes to a file (a full pipe would block it)."""

    popen: subprocess.Popen[str]
    log: IO[str]

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"process did not exit in {timeout}s:\n{self.output()}") from None

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


@dataclass
class Tenants:
    """The roles of one test, with helpers that act as each of them."""

    space: Space
    tag: str
    names: dict[str, str]
    dsns: dict[str, str]
    private: dict[str, str]  # analyst -> private schema
    procs: list[Proc] = field(default_factory=list)

    @property
    def schema(self) -> str:
        return self.space.schema

    def role(self, who: str) -> str:
        return self.names[who]

    def settings(self, who: str, **kw: Any) -> Settings:
        return Settings(dsn=self.dsns[who], schema=self.schema, **kw)

    def client(self, who: str, **kw: Any) -> Client:
        return Client(self.settings(who, **kw))

    def _text(self, text: str) -> str:
        out = text.replace("{state}", sql.Identifier(self.schema).as_string(None))
        for who, schema in self.private.items():
            out = out.replace("{" + who + "}", sql.Identifier(schema).as_string(None))
        return out

    def connect(self, who: str) -> psycopg.Connection[tuple[Any, ...]]:
        dsn = self.space.admin_dsn if who == "admin" else self.dsns[who]
        return psycopg.connect(dsn, autocommit=True)

    def query(self, who: str, text: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
        """``text`` executed as ``who`` ("admin": the superuser, for inspection only).

        ``{state}`` is the state schema, ``{a}``/``{b}`` the analysts' private schemas."""
        with self.connect(who) as conn:
            cur = conn.execute(self._text(text), params)
            return cur.fetchall() if cur.description else []

    def admin(self, text: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
        return self.query("admin", text, params)

    def flow(self, text: str) -> str:
        """A flow's text with {state}, {a} and {b} filled in."""
        return self._text(text)

    def status(self, run_id: str) -> str:
        return str(self.admin("SELECT status FROM {state}.runs WHERE run_id = %s", (run_id,))[0][0])

    def run_row(self, run_id: str) -> dict[str, Any]:
        with self.connect("admin") as conn:
            cur = conn.execute(self._text("SELECT * FROM {state}.runs WHERE run_id = %s"), (run_id,))
            row = cur.fetchone()
            assert row is not None and cur.description is not None
            return dict(zip([c.name for c in cur.description], row, strict=True))

    def cli(self, who: str, *args: str, **popen: Any) -> Proc:
        """``python -m dbt_durable --dsn <who> --schema S ARGS`` started in the background."""
        env = {k: v for k, v in os.environ.items() if k != "DBT_DURABLE_FAULT"}
        env.update(popen.pop("env", {}))
        cmd = [sys.executable, "-m", "dbt_durable", "--dsn", self.dsns[who], "--schema", self.schema, *args]
        log = tempfile.TemporaryFile("w+")
        proc = Proc(subprocess.Popen(cmd, env=env, stdout=log, stderr=log, text=True, **popen), log)
        self.procs.append(proc)
        return proc

    def worker(self, *logins: str, once: bool = True, extra: tuple[str, ...] = (), **popen: Any) -> Proc:
        """A worker that logs in as ``worker`` and also holds the logins of ``logins``."""
        args = ["worker", "--poll", "0.2", "--park-after", "0.3", *extra]
        if once:
            args.append("--once")
        for who in logins:
            args += ["--login", self.dsns[who]]
        return self.cli("worker", *args, **popen)

    def run_worker(self, *logins: str, timeout: float = 60.0, **kw: Any) -> str:
        """A ``--once`` worker run to its end; returns its output (it must exit 0)."""
        proc = self.worker(*logins, **kw)
        code = proc.wait(timeout)
        assert code == 0, proc.output()
        return proc.output()

    def run_in_batches(self, starts: dict[str, Callable[[], str]], *logins: str, **kw: Any) -> dict[str, str]:
        """Start the runs of ``starts`` (label -> start function returning a run id) at most
        ``BATCH`` at a time, each batch drained by a ``--once`` worker; returns label -> run id.
        (Keeps each worker short; see test_a_worker_serves_many_runs_of_one_login for many.)"""
        runs: dict[str, str] = {}
        labels = list(starts)
        for i in range(0, len(labels), BATCH):
            for label in labels[i : i + BATCH]:
                runs[label] = starts[label]()
            self.run_worker(*logins, **kw)
        return runs

    def create_role(self, who: str) -> None:
        """(Re-)create ``who``'s role with its grants, schema and tables."""
        name = self.names[who]
        with self.connect("admin") as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER").format(sql.Identifier(name)))
        if who in ANALYSTS:
            with self.connect("admin") as conn:
                conn.execute(
                    sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
                        sql.Identifier(self.private[who]), sql.Identifier(name)
                    )
                )
            self.query(who, f"CREATE TABLE {{{who}}}.secret (v text)")
            self.query(who, f"INSERT INTO {{{who}}}.secret VALUES ('secret of {who}')")
            self.query(who, f"CREATE TABLE {{{who}}}.seen ({SEEN_COLUMNS})")
        if who in ("worker", *ANALYSTS):
            self.query("owner", "SELECT {state}.grant_usage(%s)", (name,))

    def drop_role(self, who: str) -> None:
        """Drop ``who``'s role (its objects first); its runs stay in the state, owned by nobody."""
        name = self.names[who]
        with self.connect("admin") as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,))
            if who in self.private:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.private[who]))
                )
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
            if exists:
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.fixture
def tenants(space: Space) -> Iterator[Tenants]:
    tag = secrets.token_hex(3)
    names = {who: f"dd_sec_{who}_{tag}" for who in ROLES}
    dsns = {}
    for who, name in names.items():
        extra: dict[str, str] = {}
        if who in ANALYSTS:
            extra["options"] = f"-c search_path=dd_priv_{who}_{tag}"
        dsns[who] = conninfo.make_conninfo(space.admin_dsn, user=name, **extra)
    t = Tenants(space, tag, names, dsns, {who: f"dd_priv_{who}_{tag}" for who in ANALYSTS})
    with psycopg.connect(space.admin_dsn, autocommit=True) as conn:
        db = conn.execute("SELECT current_database()").fetchone()
        assert db is not None
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER").format(sql.Identifier(names["owner"])))
        conn.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(db[0]), sql.Identifier(names["owner"])
            )
        )
    try:
        # The state schema is created by its owner, never by a superuser.
        t.client("owner").migrate()
        for who in ("worker", "a", "b", "outsider"):
            t.create_role(who)
        yield t
    finally:
        for proc in t.procs:
            proc.stop()
        with psycopg.connect(space.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(space.schema)))
        for who in ("outsider", "b", "a", "worker", "owner"):
            t.drop_role(who)


def serve(
    t: Tenants, *whos: str, clock: Callable[[], datetime] | None = None, **kw: Any
) -> list[WorkerStats]:
    """In-process ``--once`` workers for the logins of ``whos`` (``clock``: the workers' now)."""

    async def go() -> list[WorkerStats]:
        workers = [
            Worker(t.settings(who, **kw), poll_s=0.2, park_after_s=0.3, once=True, clock=clock)
            for who in whos
        ]
        return list(await asyncio.gather(*(w.run() for w in workers)))

    return asyncio.run(go())


def later(seconds: float) -> Callable[[], datetime]:
    """A clock ``seconds`` ahead of the real one (due cron slots without waiting for them)."""
    return lambda: datetime.now(UTC) + timedelta(seconds=seconds)


# A runner process with a short lease (the CLI has no option for it): a --once worker, or a
# resume of one run. argv: dsn schema lease_ttl_s worker|resume [run_id]
RUNNER = """
import asyncio, sys
from dbt_durable.api import Client
from dbt_durable.config import Settings
from dbt_durable.runner.worker import Worker
dsn, schema, ttl, mode = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
settings = Settings(dsn=dsn, schema=schema, lease_ttl_s=ttl, heartbeat_s=min(0.5, ttl / 4), claim_wait_s=1.0)
if mode == "worker":
    asyncio.run(Worker(settings, poll_s=0.2, park_after_s=0.3, once=True).run())
else:
    print(Client(settings).resume(sys.argv[5]).status)
"""


def runner(t: Tenants, who: str, ttl: float, *args: str, fault: str | None = None) -> Proc:
    """A RUNNER process logged in as ``who`` (``fault``: DBT_DURABLE_FAULT for it)."""
    env = {k: v for k, v in os.environ.items() if k != "DBT_DURABLE_FAULT"}
    if fault:
        env["DBT_DURABLE_FAULT"] = fault
    cmd = [sys.executable, "-c", RUNNER, t.dsns[who], t.schema, str(ttl), *args]
    log = tempfile.TemporaryFile("w+")
    proc = Proc(subprocess.Popen(cmd, env=env, stdout=log, stderr=log, text=True), log)
    t.procs.append(proc)
    return proc
