"""Durable dbt builds: a dbt selection run node by node, with a checkpoint per node in Postgres.

One ``dbt build`` subprocess runs the selection (so dbt starts once, as usual); it reports each
node event as a JSON line (see :mod:`dbt_durable.bridge.dbt_child`) that is read as it streams,
and every node that finishes successfully is checkpointed at once. A
build killed at model k therefore resumes at model k: the next attempt excludes every
checkpointed node. This is where dbt's own ``retry`` loses progress, since its
run_results.json is only written at the end.

Guarantee: at least once per node. A node that finished just before a kill, but whose
checkpoint was not yet written, runs again (dbt models rebuild idempotently).
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import json
import os
import shutil
import signal
import sys
from typing import Any

from dbt_durable.bridge.dbt_child import EVENT_FD_ENV, PROTOCOL_KEY
from dbt_durable.errors import DurableError

OK_STATUSES = {"success", "pass", "warn", "no-op"}
OTHER_OUTPUT_KEPT = 30  # lines of dbt's console output kept for a failure message
FAILED_STATUSES = {"error", "fail", "runtime error", "partial success"}


def dbt_command() -> list[str]:
    exe = shutil.which("dbt")
    return [exe] if exe else [sys.executable, "-c", "from dbt.cli.main import cli; cli()"]


def _die_with_parent() -> None:  # runs in the child before exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def build_command(target: dict[str, Any], done_names: list[str]) -> list[str]:
    """The ``dbt build`` command of a durable build, excluding the checkpointed nodes."""
    cmd = [sys.executable, "-m", "dbt_durable.bridge.dbt_child", "build"]
    for flag in ("project_dir", "profiles_dir", "target"):
        if target.get(flag):
            cmd += ["--" + flag.replace("_", "-"), str(target[flag])]
    args = list(target.get("args") or [])
    if done_names:
        if "--exclude" in args:
            i = args.index("--exclude")
            args[i + 1 : i + 1] = done_names
        else:
            args += ["--exclude", *done_names]
    return cmd + args


async def run_build(
    target: dict[str, Any], done_names: list[str], on_node: Any, cancelled: asyncio.Event, echo: Any = None
) -> tuple[int, list[tuple[str | None, str]]]:
    """Run dbt; ``await on_node(node_info)`` for each node that finished successfully.

    dbt's console lines are passed to ``echo`` as they come (its ``START``/``OK`` lines and the
    ``Done. PASS=...`` summary, as ``dbt build`` prints them); node events come on a pipe of
    their own. Returns dbt's exit code and its errors as (failed node's unique id or None,
    message).
    """
    cmd = build_command(target, done_names)
    read_fd, write_fd = os.pipe()
    env = dict(os.environ, DBT_SEND_ANONYMOUS_USAGE_STATS="false", **{EVENT_FD_ENV: str(write_fd)})
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            pass_fds=(write_fd,),
            preexec_fn=_die_with_parent,
            limit=16 * 1024 * 1024,
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    assert proc.stdout is not None
    loop = asyncio.get_running_loop()
    events = asyncio.StreamReader(limit=16 * 1024 * 1024)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(events), os.fdopen(read_fd, "rb", buffering=0)
    )
    errors: list[tuple[str | None, str]] = []
    console_tail: collections.deque[str] = collections.deque(maxlen=OTHER_OUTPUT_KEPT)

    async def console() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            console_tail.append(line)
            if echo is not None:
                echo(line)

    async def node_events() -> None:
        async for raw in events:
            event = _event(raw)
            if event is None:
                continue
            _, info, msg = event
            if not info:  # an error outside any node (compilation, connection)
                errors.append((None, msg))
                continue
            status = info.get("node_status")
            if status in OK_STATUSES:
                await on_node(info)
            elif status in FAILED_STATUSES:
                errors.append((info.get("unique_id"), msg))

    readers: asyncio.Future[Any] = asyncio.gather(console(), node_events())
    watcher: asyncio.Future[Any] = asyncio.create_task(cancelled.wait())
    try:
        await asyncio.wait({readers, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not readers.done():  # cancelled
            proc.terminate()
        await readers
    finally:
        watcher.cancel()
        if not readers.done():
            readers.cancel()
        transport.close()
        if proc.returncode is None and (cancelled.is_set() or sys.exc_info()[0] is not None):
            proc.terminate()
        code = await proc.wait()
    if code != 0 and not errors and console_tail:
        errors.append((None, "\n".join(line for line in console_tail if line)))
    return code, errors


def _event(line: bytes) -> tuple[str, dict[str, Any], str] | None:
    """(event name, node info, message) of a line from the dbt child; None for any other line."""
    try:
        parsed = json.loads(line)
        return parsed[PROTOCOL_KEY], dict(parsed["node_info"]), parsed["msg"] or ""
    except (ValueError, KeyError, TypeError):
        return None


# dbt flags a durable build may pass (with their value, where they take one); anything else
# could change what dbt executes or where it writes, and a build's arguments come from a row
# written by its submitter.
_FLAGS_WITH_VALUE = {
    "--select",
    "-s",
    "--exclude",
    "--selector",
    "--vars",
    "--threads",
    "--resource-type",
    "--log-level",
    "--log-format",
}
_FLAGS = {"--full-refresh", "--fail-fast", "-x", "--empty", "--no-partial-parse"}


def check_target(target: dict[str, Any], allowed_projects: tuple[str, ...] | None = None) -> None:
    """Raise :class:`DurableError` naming the problem if ``target`` is not a build this runner
    may execute: arguments outside the allowed dbt flags, or (with ``allowed_projects``) a
    project or profiles folder that is not one of them."""
    args = target.get("args") or []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise DurableError("a durable build's dbt arguments must be a list of strings")
    expect_value = False
    for arg in args:
        if expect_value:
            expect_value = False
        elif arg in _FLAGS_WITH_VALUE:
            expect_value = True
        elif arg.startswith("-") and arg not in _FLAGS:
            allowed = ", ".join(sorted(_FLAGS_WITH_VALUE | _FLAGS))
            raise DurableError(f"dbt argument {arg!r} is not allowed in a durable build (allowed: {allowed})")
    for key in ("target",):
        if target.get(key) is not None and (not isinstance(target[key], str) or target[key].startswith("-")):
            raise DurableError(f"invalid dbt {key} {target[key]!r}")
    if allowed_projects is None:
        return
    served = {os.path.realpath(p) for p in allowed_projects}
    for key in ("project_dir", "profiles_dir"):
        folder = target.get(key)
        if key == "profiles_dir" and folder is None:
            continue
        if not isinstance(folder, str) or os.path.realpath(folder) not in served:
            raise DurableError(
                f"this runner does not serve dbt project folder {folder!r} ({key}); start the "
                "worker with --dbt-project FOLDER for each project whose builds it may run"
            )
