"""The state schema keeps to the rule that lets it be sharded by run (docs/scaling.md).

Every state table's primary key, and every index on a state table, begins with ``run_id``;
every foreign key joins rows of one run (``run_id`` to ``runs.run_id``), so no constraint
crosses runs and a run's rows can live together on one shard. The exceptions are listed here,
each with its reason, and in docs/scaling.md.
"""

from __future__ import annotations

from tests.conftest import Space

# Small tables, not keyed by run: a sharded deployment keeps them as reference tables (one
# copy everywhere, or on the coordinator).
SMALL_TABLES = {
    "schedules": "a few rows per schedule; keyed by (owner, name); fires runs, holds none",
    "workers": "one row per worker process (its host, pid and heartbeat)",
    "schema_version": "one row per migration",
}

# Indexes on run tables that do not begin with run_id, and why that is right.
EXCEPTIONS = {
    "runs_flow_key": "UNIQUE (submitted_by_oid, flow_name, run_key): one run per login, flow and "
    "key. Unique across runs, so a sharded deployment must derive the run id from that key "
    "(or keep runs' keys on one node); see docs/scaling.md",
    "runs_pending": "the claim index of queued runs, per login: a worker's claim is a scan of "
    "its login's queue; on a sharded deployment each shard has its own and a claim runs per shard",
    "runs_waiting_wake": "the claim index of parked runs by wake-up time, per login (as runs_pending)",
    "runs_running_lease": "the claim index of orphaned runs by lease expiry, per login (as runs_pending)",
    "runs_by_flow": "status and resume look-ups by flow name, per login (a per-shard index)",
    "runs_finished": "retention: finished runs by age, for purging; runs per shard",
}

KEYS = """
SELECT c.relname, i.relname, ix.indisprimary,
       (SELECT a.attname FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum = ix.indkey[0])
  FROM pg_index ix
  JOIN pg_class c ON c.oid = ix.indrelid
  JOIN pg_class i ON i.oid = ix.indexrelid
 WHERE c.relnamespace = %s::regnamespace
 ORDER BY 1, 2
"""

TABLES = "SELECT relname FROM pg_class WHERE relnamespace = %s::regnamespace AND relkind IN ('r', 'p')"

FOREIGN_KEYS = """
SELECT conrelid::regclass::text, confrelid::regclass::text,
       (SELECT array_agg(a.attname::text ORDER BY k.n) FROM unnest(conkey) WITH ORDINALITY k(att, n)
          JOIN pg_attribute a ON a.attrelid = conrelid AND a.attnum = k.att),
       (SELECT array_agg(a.attname::text ORDER BY k.n) FROM unnest(confkey) WITH ORDINALITY k(att, n)
          JOIN pg_attribute a ON a.attrelid = confrelid AND a.attnum = k.att)
  FROM pg_constraint WHERE contype = 'f' AND connamespace = %s::regnamespace
"""


def test_every_state_table_is_keyed_by_run_first(space: Space) -> None:
    space.client().migrate()
    tables = {str(r[0]) for r in space.query(TABLES, (space.schema,))}
    run_tables = tables - set(SMALL_TABLES)
    assert {"runs", "nodes", "events", "signals"} <= run_tables
    keyed = space.query(KEYS, (space.schema,))
    with_pkey = {str(t) for t, _, primary, _ in keyed if primary}
    assert tables <= with_pkey, f"tables without a primary key: {tables - with_pkey}"

    wrong = [
        (str(table), str(index), str(first))
        for table, index, _, first in keyed
        if table in run_tables and first != "run_id" and index not in EXCEPTIONS
    ]
    assert wrong == [], "an index on a run table must begin with run_id (or be listed with its reason)"
    for table, index, primary, first in keyed:
        if primary and table in run_tables:
            assert first == "run_id", f"{table}'s primary key must begin with run_id"
        if index in EXCEPTIONS:
            assert table == "runs" and not primary


def test_no_foreign_key_crosses_runs(space: Space) -> None:
    space.client().migrate()
    schema = space.schema
    for table, target, columns, referenced in space.query(FOREIGN_KEYS, (schema,)):
        assert target == f"{schema}.runs", f"{table} references {target}: only runs may be referenced"
        assert columns == ["run_id"] and referenced == ["run_id"], f"{table}: {columns} -> {referenced}"
