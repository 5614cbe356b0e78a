"""docs/deployment.md, command by command, against a real PostgreSQL 15 server.

Every line of the page's ``bash`` blocks must be one of the commands run here; the systemd
unit's ``ExecStart``, the Dockerfile's ``CMD`` and its ``HEALTHCHECK`` are run as written
(with a free port for 8181 and the test server as ``DBT_DURABLE_DSN``).
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dbt_durable.api import Client
from dbt_durable.config import Settings
from dbt_durable.errors import GraphChanged
from dbt_durable.runner.health import Health
from tests.ha import fleet
from tests.ha.servers import PgServer, free_port, requires_servers, single_server

pytestmark = requires_servers

DOC = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"
PORT = "8181"
MIGRATE = "dbt-durable migrate"
WORKER = f"dbt-durable worker --concurrency 4 --health-port {PORT}"
HEALTHZ = f"curl -fsS http://127.0.0.1:{PORT}/healthz"
LIVEZ = f"curl -fsS http://127.0.0.1:{PORT}/livez"
DRAIN = 'kill -TERM "$WORKER_PID"'
SHOWN = {MIGRATE, WORKER, HEALTHZ, LIVEZ, DRAIN}


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


def doc_commands() -> list[str]:
    return [
        line.strip()
        for block in blocks("bash")
        for line in block.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def exec_start() -> str:
    (unit,) = blocks("ini")
    found = re.search(r"^ExecStart=(.*)$", unit, flags=re.M)
    assert found
    return found.group(1)


def dockerfile(instruction: str) -> str:
    (text,) = blocks("dockerfile")
    found = re.search(rf"^{instruction} (.*)$", text, flags=re.M)
    assert found
    return found.group(1)


@pytest.fixture(scope="module")
def server() -> Iterator[PgServer]:
    with single_server("dd-deploy-") as s:
        yield s


def env(server: PgServer) -> dict[str, str]:
    return fleet.environment(DBT_DURABLE_DSN=server.dsn)


def shell(command: str, port: int, server: PgServer, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command.replace(PORT, str(port))],
        env={**env(server), **extra},
        capture_output=True,
        text=True,
        timeout=60,
    )


def start(command: str | list[str], port: int, server: PgServer, name: str) -> fleet.Proc:
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    return fleet.Proc(name, [a.replace(PORT, str(port)) for a in argv], env(server))


def healthy(port: int, server: PgServer, command: str = HEALTHZ) -> bool:
    done = shell(command, port, server)
    return done.returncode == 0 and json.loads(done.stdout)["status"] == "ok"


def test_the_page_shows_only_tested_commands() -> None:
    assert set(doc_commands()) == SHOWN
    assert exec_start() == f"/usr/bin/env {WORKER}"
    assert json.loads(dockerfile("CMD")) == [*shlex.split(WORKER), "--health-host", "0.0.0.0"]
    assert dockerfile("HEALTHCHECK").endswith(f"CMD {HEALTHZ} || exit 1")


def test_migrate_worker_health_and_a_graceful_drain(server: PgServer) -> None:
    done = shell(MIGRATE, 0, server)
    assert done.returncode == 0, done.stderr
    fleet.query(server.dsn, fleet.EFFECTS_TABLE)
    client = Client(Settings(dsn=server.dsn))
    long_step = fleet.STEP % 3  # a 3 s statement, with its effect
    run_id = client.start(
        f"{fleet.chain(2)} ~> {long_step} ~> {fleet.chain(2)}", name="drain", wait=False
    ).run_id

    port = free_port()
    first = start(WORKER, port, server, "worker")
    try:
        fleet.wait_for(lambda: healthy(port, server), 30, "/healthz answers 200")
        assert healthy(port, server, LIVEZ)
        # The run is in its long statement: drain the worker.
        fleet.wait_for(
            lambda: (
                fleet.query(
                    server.dsn,
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s",
                    ("%pg_sleep(3)%",),
                )
                != [(0,)]
            ),
            30,
            "the long statement running",
        )
        stopped_at = time.time()
        drained = shell(DRAIN, port, server, WORKER_PID=str(first.pid))
        assert drained.returncode == 0, drained.stderr
        assert first.process.wait(timeout=10) == 0, first.text()
        assert time.time() - stopped_at < 2.5  # before the 3 s statement would have ended
        assert "worker stopped" in first.text()
    finally:
        first.kill()
    # Handed back at once: the lease is already expired, so any worker may claim the run.
    handed_back = fleet.query(
        server.dsn,
        "SELECT status, lease_expires_at < now() FROM dbt_durable.runs WHERE run_id = %s",
        (run_id,),
    )
    assert handed_back == [("running", True)]

    # The systemd unit's command continues the run at once.
    second = start(exec_start(), port, server, "systemd")
    try:
        fleet.wait_for(
            lambda: (
                fleet.query(server.dsn, "SELECT status FROM dbt_durable.runs WHERE run_id = %s", (run_id,))
                == [("completed",)]
            ),
            12,  # well under the 15 s lease: the drained worker released it
            "the run continued by the next worker",
        )
        assert time.time() - stopped_at < 12
    finally:
        assert second.stop() == 0
    after = fleet.check(server.dsn)
    assert after.exact, after
    assert len(after.nodes) == 5


def test_the_container_command_and_its_healthcheck(server: PgServer) -> None:
    assert shell(MIGRATE, 0, server).returncode == 0
    port = free_port()
    container = start(json.loads(dockerfile("CMD")), port, server, "container")
    try:
        check = dockerfile("HEALTHCHECK").split(" CMD ", 1)[1]
        fleet.wait_for(lambda: shell(check, port, server).returncode == 0, 30, "the HEALTHCHECK passes")
        # The database goes away: the check fails (503), /livez still passes; it comes back.
        server.stop("fast")
        fleet.wait_for(lambda: shell(check, port, server).returncode != 0, 10, "the HEALTHCHECK fails")
        assert healthy(port, server, LIVEZ)
        server.start()
        fleet.wait_for(lambda: shell(check, port, server).returncode == 0, 30, "the HEALTHCHECK passes again")
    finally:
        if not server.running():
            server.start()
        assert container.stop() == 0


class _Stats:
    claimed = 0
    finished: dict[str, int] = {}


class _Worker:
    def __init__(self, dsn: str):
        self.settings = Settings(dsn=dsn)
        self.stats = _Stats()


def test_health_answers_503_for_a_dead_loop_a_drain_or_a_standby(server: PgServer) -> None:
    async def go() -> list[tuple[int, dict[str, Any]]]:
        alive = asyncio.create_task(asyncio.sleep(60))
        dead = asyncio.create_task(asyncio.sleep(0))
        await asyncio.sleep(0.01)
        unreachable = f"host=127.0.0.1 port={free_port()} user=postgres dbname=postgres connect_timeout=1"
        out = [
            await Health([_Worker(server.dsn)], [alive]).report(),
            await Health([_Worker(server.dsn)], [dead]).report(),
            await Health([_Worker(unreachable)], [alive]).report(),
            await Health([_Worker(unreachable)], [alive]).report(with_database=False),
        ]
        draining = Health([_Worker(server.dsn)], [alive])
        draining.draining = True
        out.append(await draining.report())
        alive.cancel()
        return out

    ok, dead, unreachable, live_only, draining = asyncio.run(go())
    assert ok[0] == 200 and ok[1]["workers"][0]["database"] == "reachable"
    assert dead[0] == 503 and dead[1]["workers"][0]["loop"] == "stopped"
    assert unreachable[0] == 503 and unreachable[1]["workers"][0]["database"].startswith("unreachable")
    assert "port" not in json.dumps(unreachable[1])  # no DSN in the body
    assert live_only[0] == 200
    assert draining == (503, {**draining[1], "status": "draining"})


def test_a_run_in_flight_keeps_its_graph_across_a_changed_flow(server: PgServer) -> None:
    assert shell(MIGRATE, 0, server).returncode == 0
    fleet.query(server.dsn, fleet.EFFECTS_TABLE)
    client = Client(Settings(dsn=server.dsn))
    v1 = f"{fleet.chain(2)} ~> sleep(1) ~> {fleet.chain(2)}"
    v2 = f"{fleet.chain(3)} ~> sleep(1) ~> {fleet.chain(3)}"
    run_id = client.start(v1, name="upgraded", key="2026-12-01", wait=False).run_id
    # The new release's flow, under the same name and key, is refused while v1 is in flight.
    with pytest.raises(GraphChanged):
        client.start(v2, name="upgraded", key="2026-12-01", wait=False)
    # A worker continues the run on its own stored graph (4 steps, not 6), ...
    port = free_port()
    w = start(WORKER, port, server, "worker")
    try:
        fleet.wait_for(
            lambda: (
                fleet.query(server.dsn, "SELECT status FROM dbt_durable.runs WHERE run_id = %s", (run_id,))
                == [("completed",)]
            ),
            30,
            "the v1 run completed",
        )
    finally:
        assert w.stop() == 0
    steps = fleet.query(server.dsn, "SELECT count(*) FROM public.effects WHERE run_id = %s", (run_id,))
    assert steps == [(4,)]
    # ... and the new version starts afresh only on request.
    fresh = client.start(v2, name="upgraded", key="2026-12-01", fresh=True, wait=True)
    assert fresh.outcome is not None and fresh.outcome.status == "completed"
    assert fresh.run_id != run_id


def test_a_worker_leaves_a_newer_schema_alone(server: PgServer) -> None:
    """An old worker started against a schema a newer release migrated never downgrades it
    and still starts (the version table says the schema is newer than it knows)."""
    assert shell(MIGRATE, 0, server).returncode == 0
    before = fleet.query(server.dsn, "SELECT max(version) FROM dbt_durable.schema_version")[0][0]
    fleet.query(server.dsn, "INSERT INTO dbt_durable.schema_version (version, name) VALUES (9999, 'future')")
    try:
        port = free_port()
        w = start(WORKER, port, server, "worker")
        try:
            fleet.wait_for(lambda: healthy(port, server), 30, "the worker started")
        finally:
            assert w.stop() == 0
        versions = fleet.query(
            server.dsn,
            "SELECT max(version), count(*) FILTER (WHERE version > %s) FROM dbt_durable.schema_version",
            (before,),
        )
        assert versions == [(9999, 1)]
    finally:
        fleet.query(server.dsn, "DELETE FROM dbt_durable.schema_version WHERE version = 9999")
