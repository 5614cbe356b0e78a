"""Every SQL statement the Python side sends, in one place.

``{s}`` stands for the quoted state schema; :class:`Queries` formats them once per schema.
The state-changing logic that must be atomic (fencing, checkpoints) lives in SQL functions
in ``runtime/migrations``.
"""

from __future__ import annotations

from psycopg import sql

INSERT_RUN = """
INSERT INTO {s}.runs (flow_name, run_key, flow_text, graph, graph_hash, plan, vars, status)
VALUES (%(flow_name)s, %(run_key)s, %(flow_text)s, %(graph)s, %(graph_hash)s, %(plan)s, %(vars)s, 'pending')
ON CONFLICT (flow_name, run_key) WHERE run_key IS NOT NULL DO NOTHING
RETURNING run_id
"""

INSERT_RUN_EVENT = """
INSERT INTO {s}.events (run_id, kind, detail) VALUES (%s, %s, %s)
"""

RUN_BY_KEY = """
SELECT run_id, graph_hash, vars, status FROM {s}.runs WHERE flow_name = %s AND run_key = %s
"""

LATEST_UNFINISHED = """
SELECT run_id, graph_hash, vars, status FROM {s}.runs
 WHERE flow_name = %s AND status IN ('pending', 'running', 'waiting', 'failed')
 ORDER BY created_at DESC LIMIT 1
"""

RETIRE_RUN = """
UPDATE {s}.runs SET status = 'cancelled', cancel_requested = 'superseded by a fresh start',
       error = 'superseded by a fresh start', finished_at = now(), updated_at = now()
 WHERE run_id = %s AND status IN ('pending', 'running', 'waiting', 'failed')
"""

RETIRE_KEY = """
UPDATE {s}.runs SET run_key = run_key || ':superseded:' || run_id::text,
       status = CASE WHEN status IN ('completed', 'failed', 'cancelled') THEN status ELSE 'cancelled' END,
       cancel_requested = CASE WHEN status IN ('completed', 'failed', 'cancelled') THEN cancel_requested
                               ELSE 'superseded by a fresh start' END,
       finished_at = coalesce(finished_at, now()), updated_at = now()
 WHERE run_id = %s
"""

GET_RUN = """
SELECT run_id, flow_name, run_key, flow_text, graph_hash, vars, status, submitted_by, lease_owner,
       lease_expires_at, cancel_requested, result, error, failed_node, created_at, started_at,
       finished_at, updated_at, kind, dbt_args
  FROM {s}.runs WHERE run_id = %s
"""

LIST_RUNS = """
SELECT run_id, flow_name, run_key, status, nodes_completed, nodes_failed, graph_nodes, failed_node,
       error, created_at, finished_at
  FROM {s}.progress ORDER BY created_at DESC LIMIT %s
"""

RUN_NODES = """
SELECT exec_key, node_id, kind, status, attempts, result, error, wake_at, started_at, finished_at
  FROM {s}.nodes WHERE run_id = %s ORDER BY started_at, exec_key
"""

LOAD_PLAN = "SELECT plan FROM {s}.runs WHERE run_id = %s"

# Resume loads what is done (and what is parked: durable timers). Results are read only for
# the nodes whose stored result a replay uses (``needed``, node ids; all with ``all_results``):
# a step in the middle of a sequence is skipped on a resume without reading its result.
LOAD_PROGRESS = """
SELECT exec_key, status,
       CASE WHEN %(all_results)s OR node_id = ANY(%(needed)s) THEN result::text END,
       wake_at, attempts, %(all_results)s OR node_id = ANY(%(needed)s)
  FROM {s}.nodes WHERE run_id = %(run_id)s AND status IN ('completed', 'waiting', 'failed')
"""

ADVISORY_LOCK = "SELECT pg_advisory_lock(hashtextextended(%s, 0))"
ADVISORY_TRY_LOCK = "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))"
ADVISORY_UNLOCK = "SELECT pg_advisory_unlock(hashtextextended(%s, 0))"

# Backends of a runner that is gone; its in-flight transactions roll back with them.
TERMINATE_OWNER = """
SELECT count(pg_terminate_backend(pid, 5000))
  FROM pg_stat_activity
 WHERE application_name = %s AND pid <> pg_backend_pid()
"""

# The first statement of a takeover: the exclusive side of the checkpoint fence (the key is the
# one in runtime/migrations/0006_advisory_fence.sql), so in-flight checkpoints commit first.
FENCE_TAKEOVER = "SELECT pg_advisory_xact_lock(1684174884, hashtext(%s::text))"

LOCK_RUN = """
SELECT status, lease_owner, cancel_requested FROM {s}.runs WHERE run_id = %s FOR UPDATE
"""

TAKE_LEASE = """
UPDATE {s}.runs
   SET lease_owner = %(owner)s, lease_expires_at = now() + make_interval(secs => %(ttl)s),
       status = 'running', started_at = coalesce(started_at, now()), updated_at = now(),
       error = NULL, failed_node = NULL, finished_at = NULL
 WHERE run_id = %(run_id)s
"""

RESET_FAILED_NODES = """
UPDATE {s}.nodes SET status = 'cancelled' WHERE run_id = %s AND status IN ('failed', 'running')
"""

HEARTBEAT = """
UPDATE {s}.runs SET lease_expires_at = now() + make_interval(secs => %s)
 WHERE run_id = %s AND lease_owner = %s
RETURNING cancel_requested
"""

FINISH_RUN = """
UPDATE {s}.runs
   SET status = %(status)s, result = %(result)s, error = %(error)s, failed_node = %(failed_node)s,
       finished_at = CASE WHEN %(status)s IN ('completed', 'failed', 'cancelled') THEN now() END,
       wake_at = %(wake_at)s, waiting_for = %(waiting_for)s, lease_owner = NULL, lease_expires_at = NULL,
       updated_at = now()
 WHERE run_id = %(run_id)s AND lease_owner = %(owner)s
RETURNING run_id
"""

NODE_STATUS = "SELECT status FROM {s}.nodes WHERE run_id = %s AND exec_key = %s"

# Shutdown: hand the run back at once (the lease is expired, the owner kept so that the next
# runner terminates any backend this one leaves behind).
RELEASE_LEASE = """
UPDATE {s}.runs SET lease_expires_at = now() - interval '1 second', updated_at = now()
 WHERE run_id = %s AND lease_owner = %s
"""

# A worker takes due runs; SKIP LOCKED lets many workers share the queue without waiting.
CLAIM_RUNNABLE = """
WITH pending AS (
    SELECT run_id, created_at AS due FROM {s}.runs
     WHERE status = 'pending' ORDER BY created_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), woken AS (
    SELECT run_id, wake_at AS due FROM {s}.runs
     WHERE status = 'waiting' AND wake_at <= now() ORDER BY wake_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), signalled AS (
    SELECT c.run_id, c.created_at AS due FROM {s}.runs c
     WHERE c.status = 'waiting' AND (c.cancel_requested IS NOT NULL OR EXISTS (
            SELECT 1 FROM {s}.signals g
             WHERE g.run_id = c.run_id AND g.name = c.waiting_for AND g.consumed_at IS NULL))
     LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), orphaned AS (
    SELECT run_id, lease_expires_at AS due FROM {s}.runs
     WHERE status = 'running' AND lease_expires_at < now()
     ORDER BY lease_expires_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), chosen AS (
    SELECT run_id FROM (SELECT * FROM pending UNION ALL SELECT * FROM woken
                        UNION ALL SELECT * FROM signalled UNION ALL SELECT * FROM orphaned) AS due_runs
     ORDER BY due LIMIT %(limit)s
)
UPDATE {s}.runs AS r SET status = 'running', lease_expires_at = now() + make_interval(secs => %(ttl)s),
       updated_at = now()
  FROM chosen WHERE r.run_id = chosen.run_id
RETURNING r.run_id
"""

NEXT_WAKE = """
SELECT extract(epoch FROM min(wake_at) - now()) FROM {s}.runs WHERE status = 'waiting' AND wake_at IS NOT NULL
"""

WORKER_HEARTBEAT = """
INSERT INTO {s}.workers (worker_id, hostname, pid) VALUES (%s, %s, %s)
ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = now()
"""

WORKER_GONE = "DELETE FROM {s}.workers WHERE worker_id = %s"

DUE_SCHEDULES = """
SELECT name, cron, tz, target, catchup, max_catchup, last_fired_slot, created_at, overlap
  FROM {s}.schedules WHERE NOT paused ORDER BY name FOR UPDATE SKIP LOCKED
"""

UNFINISHED_COUNT = """
SELECT count(*) FROM {s}.runs WHERE flow_name = %s AND status IN ('pending', 'running', 'waiting')
"""

SCHEDULE_FIRED = """
UPDATE {s}.schedules SET last_fired_slot = greatest(last_fired_slot, %s), updated_at = now() WHERE name = %s
"""

# A skipped slot is recorded on the unfinished run that blocked it.
INSERT_SCHEDULE_EVENT = """
INSERT INTO {s}.events (run_id, kind, detail)
SELECT run_id, 'slot_skipped', %s FROM {s}.runs
 WHERE flow_name = %s AND status IN ('pending', 'running', 'waiting') ORDER BY created_at DESC LIMIT 1
"""

INSERT_BUILD_RUN = """
INSERT INTO {s}.runs (flow_name, run_key, flow_text, graph, graph_hash, vars, status, kind, dbt_args)
VALUES (%(flow_name)s, %(run_key)s, '', '{"nodes": []}', '', %(vars)s, 'pending', 'dbt_build', %(dbt_args)s)
ON CONFLICT (flow_name, run_key) WHERE run_key IS NOT NULL DO NOTHING
RETURNING run_id
"""

UPSERT_SCHEDULE = """
INSERT INTO {s}.schedules (name, cron, tz, target, catchup, max_catchup, overlap)
VALUES (%(name)s, %(cron)s, %(tz)s, %(target)s, %(catchup)s, %(max_catchup)s, %(overlap)s)
ON CONFLICT (name) DO UPDATE SET cron = EXCLUDED.cron, tz = EXCLUDED.tz, target = EXCLUDED.target,
       catchup = EXCLUDED.catchup, max_catchup = EXCLUDED.max_catchup, overlap = EXCLUDED.overlap,
       updated_at = now()
RETURNING (xmax = 0) AS created
"""

LIST_SCHEDULES = """
SELECT name, cron, tz, target, catchup, max_catchup, overlap, paused, last_fired_slot, created_at
  FROM {s}.schedules ORDER BY name
"""

PAUSE_SCHEDULE = "UPDATE {s}.schedules SET paused = %s, updated_at = now() WHERE name = %s RETURNING name"

REMOVE_SCHEDULE = "DELETE FROM {s}.schedules WHERE name = %s RETURNING name"

CHECKPOINT = "SELECT {s}.checkpoint_node(%s, %s, %s, %s, %s, %s, %s, %s)"

MARK_NODE = "SELECT {s}.mark_node(%s, %s, %s, %s, %s, %s, %s, %s, %s)"

CONSUME_SIGNAL = """
UPDATE {s}.signals SET consumed_by = %(exec_key)s, consumed_at = now()
 WHERE (run_id, signal_id) = (
        SELECT run_id, signal_id FROM {s}.signals
         WHERE run_id = %(run_id)s AND name = %(name)s AND consumed_at IS NULL
         ORDER BY signal_id LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING payload, sent_at
"""

SEND_SIGNAL = "SELECT {s}.signal(%s, %s, %s)"

CANCEL_RUN = "SELECT {s}.cancel(%s, %s)"

TYPE_NAMES = "SELECT oid::int, format_type(oid, NULL) FROM pg_type WHERE oid = ANY(%s)"


class Queries:
    """The statements above, formatted for one schema."""

    def __init__(self, schema: str):
        quoted = sql.Identifier(schema).as_string(None)
        for name, text in globals().items():
            if name.isupper() and isinstance(text, str):
                setattr(self, name.lower(), text.replace("{s}", quoted))

    def __getattr__(self, name: str) -> str:  # for type checkers; real values set in __init__
        raise AttributeError(name)
