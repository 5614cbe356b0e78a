"""Workers on many hosts, sharing one PostgreSQL 15 server over TCP.

Each worker group is a process group of its own, with its own environment and its own host
name (a UTS namespace: ``unshare --uts``; the network is the same, as for hosts on one LAN).
No group can signal another's processes: every takeover goes through the database. All
workers log in as one plain role (no superuser, no ``pg_signal_backend``): a runner may
terminate the backends of its own login, and a run of that login executes only on that
login's connections, so the same login is all a takeover needs.

- Three groups share 60 runs while one group is SIGKILLed and restarted again and again:
  every run completes, each step's effect exists once, and the dead group's runs are taken
  over by workers on the other hosts (``run_claimed`` events name the previous owner).
- A group is frozen (SIGSTOP: alive, connected, holding its runs' advisory locks, but
  silent, as a partitioned or hung host is). Once its lease expires, workers on the other
  hosts terminate its backends and take its runs over; when it wakes it writes nothing.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator

import pytest

from dbt_durable.api import Client
from dbt_durable.config import Settings
from tests.ha import fleet
from tests.ha.servers import PgServer, requires_servers, single_server

pytestmark = requires_servers

LOGIN = "dd_fleet"
HOSTS = ("host-a", "host-b", "host-c")


@pytest.fixture(scope="module")
def server() -> Iterator[PgServer]:
    with single_server("dd-hosts-") as s:
        s.sql(f"CREATE ROLE {LOGIN} LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB")
        s.sql(f"GRANT CREATE ON DATABASE postgres TO {LOGIN}")
        s.sql(f"GRANT CREATE ON SCHEMA public TO {LOGIN}")
        yield s


@pytest.fixture
def dsn(server: PgServer) -> Iterator[str]:
    dsn = f"host=127.0.0.1 port={server.port} user={LOGIN} dbname=postgres connect_timeout=3"
    fleet.migrate(dsn)  # the plain login owns the state schema
    fleet.query(dsn, fleet.EFFECTS_TABLE)
    yield dsn
    server.sql(f"DROP SCHEMA {fleet.SCHEMA} CASCADE")
    server.sql("DROP TABLE public.effects")


def plain_login(server: PgServer) -> None:
    rows = server.sql(
        "SELECT rolsuper, pg_has_role(%s, 'pg_signal_backend', 'USAGE') FROM pg_roles WHERE rolname = %s",
        (LOGIN, LOGIN),
    )
    assert rows == [(False, False)]


def hosts_of(dsn: str) -> dict[str, str]:
    """worker id -> host, as the workers registered themselves."""
    return {
        str(w): str(h) for w, h in fleet.query(dsn, f"SELECT worker_id, hostname FROM {fleet.SCHEMA}.workers")
    }


def takeovers(dsn: str) -> list[tuple[str, str]]:
    rows = fleet.query(
        dsn,
        f"SELECT detail->>'previous_owner', detail->>'owner' FROM {fleet.SCHEMA}.events "
        "WHERE kind = 'run_claimed' AND detail->>'previous_owner' IS NOT NULL",
    )
    return [(str(a), str(b)) for a, b in rows]


def short_lease_worker(dsn: str, host: str, lease_s: float) -> fleet.Proc:
    return fleet.Proc(
        host,
        [sys.executable, "-c", SHORT_LEASE_WORKER, dsn, fleet.SCHEMA, str(lease_s)],
        fleet.environment(host),
        wrap=fleet.host_wrapper(host),
    )


def registered(dsn: str, proc: fleet.Proc) -> str | None:
    """The worker id that process ``proc`` registered, with its host."""
    rows = fleet.query(dsn, f"SELECT worker_id FROM {fleet.SCHEMA}.workers WHERE pid = %s", (proc.pid,))
    return str(rows[0][0]) if rows else None


def holds(dsn: str, owner: str) -> int:
    rows = fleet.query(
        dsn,
        f"SELECT count(*) FROM {fleet.SCHEMA}.runs WHERE status = 'running' AND lease_owner = %s",
        (owner,),
    )
    return int(rows[0][0])


def test_three_hosts_one_killed_again_and_again(server: PgServer, dsn: str) -> None:
    plain_login(server)
    steps, kills = 10, 4
    client = Client(Settings(dsn=dsn, schema=fleet.SCHEMA))
    queued = 0

    def queue(n: int) -> None:
        nonlocal queued
        for _ in range(n):
            client.start(fleet.chain(steps, 0.1), name="hosts", key=str(queued), wait=False)
            queued += 1

    queue(16)
    # host-a keeps a 3 s lease, so that the runs of each killed host-a worker are orphaned
    # (claimable by any worker) 3 s after its last renewal instead of the default 15 s.
    groups = {h: fleet.worker(dsn, h, host=h, concurrency=2) for h in ("host-b", "host-c")}
    hosts: dict[str, str] = {}  # worker id -> host, as the workers registered themselves
    killed: list[str] = []
    try:
        while len(killed) < kills:
            victim = short_lease_worker(dsn, "host-a", 3.0)
            groups["host-a"] = victim
            try:
                fleet.wait_for(lambda: registered(dsn, victim) is not None, 30, "host-a registered")  # noqa: B023
                owner = registered(dsn, victim)
                assert owner is not None
                deadline = time.monotonic() + 30
                while holds(dsn, owner) == 0:  # new work, until host-a has some of it
                    assert time.monotonic() < deadline, "host-a never got a run"
                    queue(4)
                    time.sleep(0.3)
                hosts.update(hosts_of(dsn))
            finally:
                victim.kill()  # SIGKILL of the whole process group
            killed.append(owner)
        groups["host-a"] = short_lease_worker(dsn, "host-a", 3.0)
        fleet.wait_for(lambda: fleet.count_runs(dsn, "completed") == queued, 90, "every run completed", 0.2)
        hosts.update(hosts_of(dsn))
    finally:
        for p in groups.values():
            p.stop()
    after = fleet.check(dsn)
    assert after.exact, after
    assert len(after.nodes) == queued * steps
    assert fleet.count_runs(dsn) == fleet.count_runs(dsn, "completed") == queued
    # Worker identity includes the host: every group registered under its own host name.
    assert set(hosts.values()) == set(HOSTS)
    # The runs of the killed host-a workers were taken over, on the other hosts among others.
    moved = [(a, hosts.get(b)) for a, b in takeovers(dsn) if a in killed]
    assert {a for a, _ in moved} == set(killed), (killed, moved)
    assert any(b in ("host-b", "host-c") for _, b in moved), moved
    print(f"{queued} runs, {queued * steps} steps, host-a killed {len(killed)} times, {len(moved)} takeovers")


# A worker with a short lease (the default is 15 s), so that a frozen one expires quickly.
SHORT_LEASE_WORKER = """
import asyncio, sys
from dbt_durable.config import Settings
from dbt_durable.runner.worker import Worker
settings = Settings(dsn=sys.argv[1], schema=sys.argv[2], lease_ttl_s=float(sys.argv[3]), concurrency=8)
asyncio.run(Worker(settings, runs_at_once=4, poll_s=0.2, park_after_s=0.3).run())
"""


def test_a_frozen_host_is_taken_over_through_the_database(server: PgServer, dsn: str) -> None:
    plain_login(server)
    lease_s, runs, steps = 3.0, 8, 30
    client = Client(Settings(dsn=dsn, schema=fleet.SCHEMA))
    for i in range(runs):
        client.start(fleet.chain(steps, 0.05), name="frozen", key=str(i), wait=False)
    frozen = short_lease_worker(dsn, "host-a", lease_s)
    others: list[fleet.Proc] = []
    try:
        # host-a holds four runs and is making progress on them.
        fleet.wait_for(lambda: len(fleet.check(dsn).nodes) >= 8, 30, "host-a at work")
        held = fleet.query(
            dsn, f"SELECT run_id::text, lease_owner FROM {fleet.SCHEMA}.runs WHERE status = 'running'"
        )
        assert held and len({owner for _, owner in held}) == 1
        owner = str(held[0][1])
        frozen.signal(signal.SIGSTOP)
        frozen_at = time.time()
        others = [fleet.worker(dsn, h, host=h, concurrency=4) for h in ("host-b", "host-c")]
        fleet.wait_for(lambda: fleet.count_runs(dsn, "completed") == runs, 60, "every run completed")
        # host-a's sessions were terminated by a worker of the same plain login.
        assert server.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s", (f"dbt_durable:{owner}%",)
        ) == [(0,)]
        assert owner in {previous for previous, _ in takeovers(dsn)}
        taken_at = fleet.query(
            dsn,
            f"SELECT min(at) FROM {fleet.SCHEMA}.events WHERE kind = 'run_claimed' "
            "AND detail->>'previous_owner' = %s",
            (owner,),
        )[0][0]
        takeover_s = taken_at.timestamp() - frozen_at
        assert lease_s - 0.5 < takeover_s < lease_s + 20
        # host-a wakes up: its connections are gone, so it writes nothing twice.
        frozen.signal(signal.SIGCONT)
        time.sleep(2)
    finally:
        frozen.kill()
        for p in others:
            p.stop()
    after = fleet.check(dsn)
    assert after.exact, after
    assert len(after.nodes) == runs * steps
    assert fleet.count_runs(dsn, "completed") == runs
    print(f"frozen host taken over {takeover_s:.2f}s after SIGSTOP (lease {lease_s}s)")
