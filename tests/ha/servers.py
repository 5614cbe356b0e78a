"""Real servers for the high-availability tests: Debian's PostgreSQL 15 and PgBouncer.

Every server is started by the test, on 127.0.0.1, on a free port, with its files under a
``tempfile.mkdtemp()`` folder of its own that is chowned to the ``postgres`` system user (the
servers refuse to run as root, so they run as that user through ``runuser``). Nothing here
touches the machine's own clusters.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
SYSTEM_USER = "postgres"


def missing() -> str | None:
    """Why these tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (the servers run as the postgres system user through runuser)"
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL 15 is not installed ({PG_BIN})"
    if shutil.which("runuser") is None:
        return "runuser is missing"
    return None


requires_servers = pytest.mark.skipif(missing() is not None, reason=missing() or "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def as_postgres(
    *cmd: str | Path | int, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["runuser", "-u", SYSTEM_USER, "--", *map(str, cmd)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, cmd))} failed ({done.returncode}): {done.stderr or done.stdout}"
        )
    return done


def private_folder(prefix: str) -> Path:
    """A folder the postgres user owns (not pytest's tmp_path, whose root is 0700 root)."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    home.chmod(0o755)
    shutil.chown(home, SYSTEM_USER, SYSTEM_USER)
    return home


@dataclass
class PgServer:
    """One PostgreSQL 15 server (a primary or a standby) on 127.0.0.1."""

    name: str
    home: Path
    port: int = field(default_factory=free_port)

    @property
    def data(self) -> Path:
        return self.home / self.name

    @property
    def log(self) -> Path:
        return self.home / f"{self.name}.log"

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres connect_timeout=3"

    def conf(self, **settings: object) -> None:
        """Append settings to the server's postgresql.auto.conf (the last value wins)."""
        lines = "".join(f"{k} = '{v}'\n" for k, v in settings.items())
        with (self.data / "postgresql.auto.conf").open("a") as f:
            f.write(lines)

    def initdb(self) -> None:
        as_postgres(
            PG_BIN / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"
        )
        self.conf(**self._base())

    def _base(self) -> dict[str, object]:
        return {
            "port": self.port,
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.home),
            "max_connections": 200,
            "wal_level": "replica",
            "max_wal_senders": 10,
            "wal_keep_size": "512MB",
            "hot_standby": "on",
            "shared_buffers": "64MB",
            "log_min_messages": "warning",
        }

    def basebackup_from(self, primary: PgServer, application_name: str) -> None:
        """Make this server a streaming-replication standby of ``primary``."""
        as_postgres(
            PG_BIN / "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            primary.port,
            "-U",
            "postgres",
            "-D",
            self.data,
            "-R",
            "-X",
            "stream",
            "--no-sync",
        )
        self.conf(
            **self._base(),
            primary_conninfo=f"host=127.0.0.1 port={primary.port} user=postgres application_name={application_name}",
            synchronous_standby_names="",  # once promoted, it waits for no one
        )

    def start(self) -> None:
        as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast", timeout: float = 20) -> None:
        """``pg_ctl stop -m MODE``; a server that is not gone after ``timeout`` seconds (a
        loaded machine) is SIGKILLed with its children, so a test never hangs on it."""
        pid = self.postmaster_pid()
        as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-m", mode, "-W", "stop", check=False)
        deadline = time.monotonic() + timeout
        while pid is not None and _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if pid is not None and _alive(pid):
            for child in [pid, *_children(pid)]:
                try:
                    os.kill(child, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            while _alive(pid):
                time.sleep(0.02)
        (self.data / "postmaster.pid").unlink(missing_ok=True)

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def promote(self) -> None:
        as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-w", "-t", "60", "promote")

    def running(self) -> bool:
        return as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "status", check=False).returncode == 0

    def sql(self, text: str, params: tuple[object, ...] | None = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(text.encode() if params is None else text, params)
            return cur.fetchall() if cur.description else []


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                pass
    return found


def wait_until(check: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except psycopg.Error:
            pass
        time.sleep(0.02)
    raise AssertionError(f"{what} not reached in {timeout:.0f}s")


@contextmanager
def primary_and_standby(synchronous: bool) -> Iterator[tuple[PgServer, PgServer]]:
    """A primary and a streaming standby of it; with ``synchronous``, the standby is the
    primary's synchronous standby (``synchronous_commit = on``: a commit returns once the
    standby has flushed it)."""
    home = private_folder("dd-ha-")
    primary, standby = PgServer("primary", home), PgServer("standby", home)
    try:
        primary.initdb()
        primary.start()
        standby.basebackup_from(primary, "standby1")
        standby.start()
        if synchronous:
            primary.sql("ALTER SYSTEM SET synchronous_standby_names = 'standby1'")
            primary.sql("ALTER SYSTEM SET synchronous_commit = 'on'")
            primary.sql("SELECT pg_reload_conf()")
            wait_until(
                lambda: primary.sql("SELECT sync_state FROM pg_stat_replication") == [("sync",)],
                what="a synchronous standby",
            )
        else:
            wait_until(
                lambda: primary.sql("SELECT state FROM pg_stat_replication") == [("streaming",)],
                what="a streaming standby",
            )
        yield primary, standby
    finally:
        for server in (primary, standby):
            if server.data.exists():
                server.stop("immediate")
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def single_server(prefix: str = "dd-pg15-") -> Iterator[PgServer]:
    home = private_folder(prefix)
    server = PgServer("main", home)
    try:
        server.initdb()
        server.start()
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(home, ignore_errors=True)


@dataclass
class Bouncer:
    """A PgBouncer in front of one server, run as the postgres system user."""

    home: Path
    port: int
    process: subprocess.Popen[str]

    def dsn(self, user: str, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={user} dbname={dbname} connect_timeout=3"


@contextmanager
def pgbouncer(server: PgServer, pool_mode: str, users: list[str]) -> Iterator[Bouncer]:
    """PgBouncer on 127.0.0.1 in ``pool_mode`` (session or transaction), trusting ``users``."""
    home = private_folder(f"dd-pgbouncer-{pool_mode}-")
    port = free_port()
    (home / "userlist.txt").write_text("".join(f'"{u}" ""\n' for u in users))
    (home / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host=127.0.0.1 port={server.port}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        f"unix_socket_dir = {home}\n"
        "auth_type = trust\n"
        f"auth_file = {home / 'userlist.txt'}\n"
        f"pool_mode = {pool_mode}\n"
        "max_client_conn = 500\n"
        "default_pool_size = 100\n"
        "server_reset_query = DISCARD ALL\n"
        f"logfile = {home / 'pgbouncer.log'}\n"
        f"pidfile = {home / 'pgbouncer.pid'}\n"
        "ignore_startup_parameters = extra_float_digits,options\n"
    )
    for f in home.iterdir():
        shutil.chown(f, SYSTEM_USER, SYSTEM_USER)
    process = subprocess.Popen(
        ["runuser", "-u", SYSTEM_USER, "--", PGBOUNCER, str(home / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    bouncer = Bouncer(home, port, process)
    try:
        wait_until(lambda: _accepts(port), timeout=15, what="pgbouncer listening")
        yield bouncer
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        shutil.rmtree(home, ignore_errors=True)


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
