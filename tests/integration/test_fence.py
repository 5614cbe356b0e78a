"""The checkpoint fence: a checkpoint commits only while its runner holds the run's lease.

These drive the SQL that runners send (``checkpoint_node`` and a takeover's first statements)
on real connections, in the order that matters, without timing.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import psycopg
import pytest

from dbt_durable.runner.steps import CheckpointWriter
from dbt_durable.store.queries import Queries
from tests.conftest import Space


def _running_run(space: Space, owner: str) -> str:
    space.query("CREATE TABLE effects (step text)")
    run_id = space.client().start("'SELECT 1'", wait=False).run_id
    with psycopg.connect(space.dsn, autocommit=True) as conn:
        _take_over(conn, Queries(space.schema), run_id, owner)
    return run_id


def _checkpoint(q: Queries, run_id: str, owner: str) -> bytes:
    writer = CheckpointWriter(q.checkpoint, run_id, owner)
    return writer.statement("0", "0", 1, '{"rows": [], "row_count": 1}', datetime.now(UTC))


def _take_over(conn: psycopg.Connection, q: Queries, run_id: str, owner: str) -> None:
    with conn.transaction():
        params = {"run_id": run_id, "owner": owner, "ttl": 60, "retry_failed": False, "max_crashes": 8}
        assert conn.execute(q.take_run, params).fetchone() == (
            True,
            "pending" if owner == "old" else "running",
            None,
        )


def test_a_checkpoint_after_a_takeover_is_refused_and_its_step_rolls_back(space: Space) -> None:
    q = Queries(space.schema)
    run_id = _running_run(space, "old")
    with psycopg.connect(space.dsn) as old, psycopg.connect(space.dsn, autocommit=True) as new:
        old.execute("INSERT INTO effects VALUES ('step 0')")  # the step, in its open transaction
        _take_over(new, q, run_id, "new")
        with pytest.raises(psycopg.Error) as err:
            old.execute(_checkpoint(q, run_id, "old"))
        assert err.value.sqlstate == "DU001"
        old.rollback()
    assert space.query("SELECT count(*) FROM effects") == [(0,)]
    assert space.query("SELECT count(*) FROM {state}.nodes") == [(0,)]


def test_a_takeover_waits_for_an_in_flight_checkpoint_and_then_sees_it(space: Space) -> None:
    q = Queries(space.schema)
    run_id = _running_run(space, "old")
    with psycopg.connect(space.dsn) as old, psycopg.connect(space.dsn, autocommit=True) as new:
        old.execute("INSERT INTO effects VALUES ('step 0')")
        old.execute(_checkpoint(q, run_id, "old"))  # fenced, not yet committed
        taken = threading.Event()
        seen: list[tuple[object, ...]] = []

        def take_over() -> None:
            _take_over(new, q, run_id, "new")
            taken.set()
            progress = {"run_id": run_id, "all_results": True, "needed": []}
            seen.extend(new.execute(q.load_progress, progress).fetchall())

        thread = threading.Thread(target=take_over)
        thread.start()
        try:
            # The takeover is blocked on the fence's lock (seen on the server, not guessed).
            pid = new.info.backend_pid
            for _ in range(200):
                waiting = space.query("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,))
                if waiting == [("Lock",)]:
                    break
                time.sleep(0.05)
            assert waiting == [("Lock",)]
            assert not taken.is_set()
            old.commit()
        finally:
            thread.join(timeout=30)
    assert taken.is_set()
    assert [(key, status) for key, status, *_ in seen] == [("0", "completed")]
    assert space.query("SELECT step FROM effects") == [("step 0",)]
