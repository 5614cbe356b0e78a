"""What the runner is measured against: a bare commit loop, DBOS Transact, ``json.loads``."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

# What the runner stores for ``SELECT 1``, so both sides write the same bytes.
SELECT_1_RESULT = {"rows": [{"?column?": 1}], "row_count": 1}


class RawCommitLoop:
    """``n`` times ``BEGIN; SELECT 1; INSERT INTO <checkpoints>; COMMIT`` on one sync connection.

    Four statements, four round trips, one commit (and one WAL flush) per node: the cost of a
    hand-written checkpoint per step, with nothing durable-workflow-specific around it.
    """

    def __init__(self, dsn: str, schema: str):
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.table = sql.Identifier(schema, "checkpoints")
        self.conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (run_id uuid NOT NULL, key text NOT NULL,"
                " result jsonb, PRIMARY KEY (run_id, key))"
            ).format(self.table)
        )
        self.insert = sql.SQL("INSERT INTO {} (run_id, key, result) VALUES (%s, %s, %s)").format(self.table)

    def run(self, n: int) -> None:
        conn = self.conn
        run_id = uuid.uuid4()
        result = Jsonb(SELECT_1_RESULT)
        for i in range(n):
            conn.execute("BEGIN")
            conn.execute("SELECT 1").fetchone()
            conn.execute(self.insert, (run_id, str(i), result))
            conn.execute("COMMIT")

    def run_one_trip(self, n: int) -> None:
        """The same work with one round trip per node: ``BEGIN; SELECT 1; INSERT ...; COMMIT``
        sent as one string (step, checkpoint and commit in one trip), as a careful hand-written
        loop would. The floor a durable runner can reach with one commit per step: the baseline
        of ``per_node_ratio_vs_one_trip``.
        """
        cur = psycopg.ClientCursor(self.conn)  # binds client-side, so one string holds four statements
        run_id = uuid.uuid4()
        result = Jsonb(SELECT_1_RESULT)
        statement = sql.SQL("BEGIN; SELECT 1; {}; COMMIT").format(self.insert)
        for i in range(n):
            cur.execute(statement, (run_id, str(i), result))

    def flush_stats(self) -> None:
        """Report this session's pending statistics now (they are otherwise sent up to 1s late)."""
        self.conn.execute("SELECT pg_stat_force_next_flush()")

    def close(self) -> None:
        self.conn.close()


class DbosUnavailable(Exception):
    """DBOS Transact cannot be imported or launched here; the message says why."""


class DbosFlow:
    """One DBOS workflow of ``n`` ``@DBOS.step`` s, each running ``SELECT 1`` on a psycopg connection.

    DBOS's system database is a database of its own (``database``) on the same server. DBOS is a
    process-wide singleton, so only one instance may be open at a time.
    """

    def __init__(self, dsn: str, database: str):
        try:
            from dbos import DBOS
            from sqlalchemy.engine import make_url
        except ImportError as exc:
            raise DbosUnavailable(
                f"DBOS Transact is not installed ({exc}); install the bench extra: pip install '.[bench]'"
            ) from None
        self.dsn = dsn
        self.database = database
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        url = make_url(dsn).set(database=database).render_as_string(hide_password=False)
        self.step_conn = psycopg.connect(dsn, autocommit=True)
        conn = self.step_conn

        @DBOS.step()
        def select_one() -> int:
            row = conn.execute("SELECT 1").fetchone()
            return int(row[0]) if row else 0

        @DBOS.workflow()
        def bench_flow(n: int) -> int:
            total = 0
            for _ in range(n):
                total += select_one()
            return total

        self._flow: Callable[[int], int] = bench_flow
        try:
            DBOS(config={"name": "dbt-durable-bench", "system_database_url": url, "log_level": "WARNING"})
            DBOS.launch()
        except Exception as exc:
            self._destroy()
            raise DbosUnavailable(f"DBOS could not launch: {type(exc).__name__}: {exc}") from None

    def run(self, n: int) -> None:
        total = self._flow(n)
        if total != n:
            raise RuntimeError(f"DBOS workflow returned {total}, expected {n}")

    def _destroy(self) -> None:
        from dbos import DBOS

        try:
            DBOS.destroy(destroy_registry=True)
        finally:
            self.step_conn.close()

    def close(self) -> None:
        self._destroy()
        with psycopg.connect(self.dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.database))
            )


def json_loader(document: dict[str, Any]) -> Callable[[], Any]:
    """A callable that parses ``document``'s JSON text (serialised once, up front)."""
    text = json.dumps(document)
    return lambda: json.loads(text)
