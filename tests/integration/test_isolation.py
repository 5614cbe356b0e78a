"""Isolation and grants with real roles: one role's runs are invisible to another, a run's SQL
executes as the role that started it, the worker needs no superuser, nothing goes to PUBLIC."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import conninfo, sql

from dbt_durable.api import Client
from dbt_durable.config import Settings
from dbt_durable.errors import RunNotFound
from tests.conftest import Space


@pytest.fixture
def roles(space: Space) -> Iterator[dict[str, str]]:
    tag = secrets.token_hex(3)
    names = {k: f"dd_{k}_{tag}" for k in ("alice", "bob", "worker", "carol")}
    client = space.client()
    client.migrate()
    with psycopg.connect(space.admin_dsn, autocommit=True) as conn:
        for name in names.values():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER").format(sql.Identifier(name)))
        for who in ("alice", "bob", "worker"):
            conn.execute(
                sql.SQL("SELECT {}.grant_usage(%s)").format(sql.Identifier(space.schema)), (names[who],)
            )
            conn.execute(
                sql.SQL("GRANT ALL ON SCHEMA {} TO {}").format(
                    sql.Identifier(space.work), sql.Identifier(names[who])
                )
            )
        conn.execute(
            sql.SQL("GRANT {} TO {}").format(sql.Identifier(names["alice"]), sql.Identifier(names["worker"]))
        )
    dsns = {k: conninfo.make_conninfo(space.dsn, user=v) for k, v in names.items()}
    yield {**names, **{f"{k}_dsn": v for k, v in dsns.items()}}
    with psycopg.connect(space.admin_dsn, autocommit=True) as conn:
        for name in names.values():
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def as_role(space: Space, roles: dict[str, str], who: str) -> Client:
    return Client(Settings(dsn=roles[f"{who}_dsn"], schema=space.schema))


def test_a_role_cannot_see_signal_cancel_or_resume_another_roles_runs(
    space: Space, roles: dict[str, str]
) -> None:
    alice, bob = as_role(space, roles, "alice"), as_role(space, roles, "bob")
    run_id = alice.start("wait_for_signal('go') ~> 'SELECT current_user AS who'", wait=False).run_id
    assert alice.get_run(run_id)["submitted_by"] == roles["alice"]
    for attempt in (
        lambda: bob.get_run(run_id),
        lambda: bob.signal(run_id, "go"),
        lambda: bob.cancel(run_id),
        lambda: bob.resume(run_id),
    ):
        with pytest.raises(RunNotFound):
            attempt()
    assert all(r["run_id"] != run_id for r in bob.list_runs())
    with psycopg.connect(roles["bob_dsn"], autocommit=True) as conn:
        assert conn.execute(
            sql.SQL("SELECT count(*) FROM {}.nodes").format(sql.Identifier(space.schema))
        ).fetchone() == (0,)


def test_a_worker_runs_each_run_on_its_submitters_login(space: Space, roles: dict[str, str]) -> None:
    from tests.integration.test_worker import worker

    alice = as_role(space, roles, "alice")
    run_id = alice.start(
        "'RESET ROLE' ~> 'SELECT current_user AS who, session_user AS login'", wait=False
    ).run_id
    # The worker's own login is not alice: it serves her runs only through her login.
    w = worker(
        Space(space.admin_dsn, roles["worker_dsn"], space.schema, space.work),
        "--once",
        "--login",
        roles["alice_dsn"],
    )
    assert w.wait(timeout=60) == 0
    assert alice.result(run_id)["rows"] == [{"who": roles["alice"], "login": roles["alice"]}]


def test_a_worker_without_the_login_leaves_the_run_alone(space: Space, roles: dict[str, str]) -> None:
    from tests.integration.test_worker import worker

    alice = as_role(space, roles, "alice")
    run_id = alice.start("'SELECT 1'", wait=False).run_id
    # The worker role is even a member of alice (GRANT alice TO worker): membership lets it
    # watch alice's runs, never execute them.
    w = worker(Space(space.admin_dsn, roles["worker_dsn"], space.schema, space.work), "--once")
    assert w.wait(timeout=60) == 0
    assert alice.get_run(run_id)["status"] == "pending"
    assert as_role(space, roles, "worker").get_run(run_id)["status"] == "pending"


def test_a_role_not_granted_cannot_see_the_run(space: Space, roles: dict[str, str]) -> None:
    bob = as_role(space, roles, "bob")
    run_id = bob.start("'SELECT 1'", wait=False).run_id
    worker_client = as_role(space, roles, "worker")
    with pytest.raises(RunNotFound):
        worker_client.get_run(run_id)


def test_nothing_is_granted_to_public(space: Space, roles: dict[str, str]) -> None:
    with psycopg.connect(roles["carol_dsn"], autocommit=True) as conn:
        for table in ("runs", "nodes", "events", "signals", "schedules"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(
                    sql.SQL("SELECT 1 FROM {}.{}").format(sql.Identifier(space.schema), sql.Identifier(table))
                )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                sql.SQL("SELECT {}.cancel(gen_random_uuid(), 'x')").format(sql.Identifier(space.schema))
            )
