"""A private PostgreSQL 15 server (Debian's package) for the measurements the embedded one
cannot take: statement counts (``pg_stat_statements`` is preloaded here; the embedded
server does not ship it) and the chaos cells (the harness stops and starts this server).

It listens on 127.0.0.1 on a free port, keeps its files in a ``tempfile.mkdtemp()`` folder
owned by the ``postgres`` system user (the server refuses to run as root, so it runs as that
user through ``runuser``), and is stopped and deleted on exit. Nothing here touches the
machine's own clusters.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SYSTEM_USER = "postgres"
MAX_CONNECTIONS = 400  # the pool-exhaustion cell holds 300 idle connections


def unavailable() -> str | None:
    """Why this server cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (PostgreSQL 15 runs as the postgres system user through runuser)"
    if not (PG_BIN / "initdb").exists():
        return f"Debian's PostgreSQL 15 is not installed ({PG_BIN})"
    if shutil.which("runuser") is None:
        return "runuser is missing"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(
    *cmd: str | Path, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["runuser", "-u", SYSTEM_USER, "--", *map(str, cmd)], capture_output=True, text=True, timeout=timeout
    )
    if check and done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, cmd))} failed ({done.returncode}): {done.stderr or done.stdout}"
        )
    return done


@dataclass
class Pg15:
    home: Path
    port: int

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres?connect_timeout=3"

    def start(self) -> None:
        _as_postgres(
            PG_BIN / "pg_ctl", "-D", self.data, "-l", self.home / "server.log", "-w", "-t", "60", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m MODE``; a server still there after 30 s is SIGKILLed."""
        pid = self._pid()
        _as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-m", mode, "-W", "stop", check=False)
        deadline = time.monotonic() + 30
        while pid is not None and _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGKILL)
        (self.data / "postmaster.pid").unlink(missing_ok=True)

    def _pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@contextmanager
def pg15_server() -> Iterator[Pg15]:
    """A fresh PostgreSQL 15 server with ``pg_stat_statements`` loaded; raises if unavailable."""
    reason = unavailable()
    if reason:
        raise RuntimeError(reason)
    home = Path(tempfile.mkdtemp(prefix="dbt-durable-bench-pg15-"))
    home.chmod(0o755)
    shutil.chown(home, SYSTEM_USER, SYSTEM_USER)
    server = Pg15(home, _free_port())
    try:
        _as_postgres(
            PG_BIN / "initdb", "-D", server.data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"
        )
        settings = {
            "port": server.port,
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(home),
            "max_connections": MAX_CONNECTIONS,
            "shared_buffers": "128MB",
            "shared_preload_libraries": "pg_stat_statements",
            "pg_stat_statements.track": "top",  # statements clients send, not those inside functions
            "pg_stat_statements.track_utility": "on",  # BEGIN, COMMIT, SAVEPOINT count too
            "pg_stat_statements.max": 10000,
            "log_min_messages": "warning",
        }
        with (server.data / "postgresql.auto.conf").open("a") as f:
            f.write("".join(f"{k} = '{v}'\n" for k, v in settings.items()))
        server.start()
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        yield server
    finally:
        try:
            server.stop("immediate")
        finally:
            shutil.rmtree(home, ignore_errors=True)
