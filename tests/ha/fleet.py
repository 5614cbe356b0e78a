"""Worker and runner processes for the high-availability tests.

Each process is a real ``python -m dbt_durable`` command in a process group of its own (as if
on a host of its own), with its output in a file (a pipe nobody reads would block it).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

import psycopg

SCHEMA = "dbt_durable"

# One step: its effect row carries the run and the node, and commits with its checkpoint.
STEP = "'INSERT INTO effects(run_id, node) SELECT ''{sys_run_id}'', ''{sys_node}'' FROM pg_sleep(%s)'"

EFFECTS_TABLE = (
    "CREATE TABLE IF NOT EXISTS public.effects("
    "run_id uuid NOT NULL, node text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
)


def chain(steps: int, sleep_s: float = 0.02) -> str:
    """A flow of ``steps`` effectful steps, in a sequence with a two-way join in the middle."""
    step = STEP % sleep_s
    if steps < 4:  # too short for the join
        return " ~> ".join([step] * steps)
    half = max(1, (steps - 2) // 2)
    rest = max(1, steps - 2 - half)
    return " ~> ".join([step] * half + [f"({step} & {step})"] + [step] * rest)


def cli(dsn: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "dbt_durable", "--dsn", dsn, "--schema", SCHEMA, *args]


def migrate(dsn: str) -> None:
    done = subprocess.run(cli(dsn, "migrate"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@dataclass
class Proc:
    """One command in a process group of its own."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    process: subprocess.Popen[str] = field(init=False)
    output: IO[str] = field(init=False)
    wrap: Sequence[str] = ()

    def __post_init__(self) -> None:
        self.output = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(
            [*self.wrap, *self.cmd],
            env=self.env,
            stdout=self.output,
            stderr=self.output,
            text=True,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (a graceful drain), then wait; SIGKILL if it does not stop in time."""
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} did not stop on SIGTERM:\n{self.text()}") from None

    def text(self) -> str:
        self.output.seek(0)
        return self.output.read()


def environment(host: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBT_DURABLE_", "PG"))}
    if host:
        env["HOSTNAME"] = host
    env.update(extra)
    return env


def host_wrapper(host: str) -> list[str]:
    """Run a command with its own host name (a UTS namespace: same network, own hostname)."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return []
    return ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', host]


def worker(dsn: str, name: str, *extra: str, host: str | None = None, concurrency: int = 4) -> Proc:
    cmd = cli(
        dsn, "worker", "--concurrency", str(concurrency), "--poll", "0.2", "--park-after", "0.3", *extra
    )
    return Proc(name, cmd, environment(host), wrap=host_wrapper(host) if host else ())


def runner(dsn: str, name: str, flow: str, key: str) -> Proc:
    return Proc(name, cli(dsn, "start", "--name", name, "--key", key, "--wait", flow), environment())


def wait_for(check: object, timeout: float, what: str, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except psycopg.OperationalError:
            pass
        time.sleep(every)
    raise AssertionError(f"{what}: not reached in {timeout:.0f}s")


def query(dsn: str, text: str, params: tuple[object, ...] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(text.encode() if params is None else text, params)
        return cur.fetchall() if cur.description else []


def count_runs(dsn: str, status: str | None = None) -> int:
    where = "" if status is None else " WHERE status = %s"
    rows = query(dsn, f"SELECT count(*) FROM {SCHEMA}.runs{where}", (status,) if status else None)
    return int(rows[0][0])


# Every completed step with its effect: the same transaction wrote both, so the node row and the
# effect row carry the same xmin (the id of the transaction that created them).
SNAPSHOT = f"""
SELECT n.run_id::text, n.exec_key, n.finished_at, n.xmin::text,
       (SELECT count(*) FROM public.effects e WHERE e.run_id = n.run_id AND e.node = n.exec_key),
       (SELECT min(e.xmin::text) FROM public.effects e WHERE e.run_id = n.run_id AND e.node = n.exec_key)
  FROM {SCHEMA}.nodes n WHERE n.status = 'completed' AND n.kind = 'sql'
"""

ORPHAN_EFFECTS = f"""
SELECT count(*) FROM public.effects e
 WHERE NOT EXISTS (SELECT 1 FROM {SCHEMA}.nodes n
                    WHERE n.run_id = e.run_id AND n.exec_key = e.node AND n.status = 'completed')
"""


@dataclass
class Check:
    """What one look at the state says about exactly-once."""

    nodes: dict[tuple[str, str], datetime]  # (run, exec key) -> finished_at
    duplicated: int
    lost: int  # a completed step without its effect
    orphans: int  # an effect without its completed step
    split: int  # effect and checkpoint from different transactions

    @property
    def exact(self) -> bool:
        return self.duplicated == self.lost == self.orphans == self.split == 0


def check(dsn: str) -> Check:
    rows = query(dsn, SNAPSHOT)
    orphans = int(query(dsn, ORPHAN_EFFECTS)[0][0])
    return Check(
        nodes={(str(r[0]), str(r[1])): r[2] for r in rows},
        duplicated=sum(int(r[4]) - 1 for r in rows if int(r[4]) > 1),
        lost=sum(1 for r in rows if int(r[4]) == 0),
        orphans=orphans,
        split=sum(1 for r in rows if int(r[4]) >= 1 and r[5] != r[3]),
    )
