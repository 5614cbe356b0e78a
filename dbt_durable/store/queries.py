"""Every SQL statement the Python side sends, in one place.

``{s}`` stands for the quoted state schema; :class:`Queries` formats them once per schema.
The state-changing logic that must be atomic (fencing, checkpoints) lives in SQL functions
in ``runtime/migrations``.
"""

from __future__ import annotations

from psycopg import sql

INSERT_RUN = """
INSERT INTO {s}.runs (flow_name, run_key, flow_text, graph, graph_hash, vars, status)
VALUES (%(flow_name)s, %(run_key)s, %(flow_text)s, %(graph)s, %(graph_hash)s, %(vars)s, 'pending')
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
       finished_at, updated_at
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

# Resume loads what is done (results) and what is parked (durable timers).
LOAD_PROGRESS = """
SELECT exec_key, status, result, wake_at, attempts
  FROM {s}.nodes WHERE run_id = %s AND status IN ('completed', 'waiting', 'failed')
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
       wake_at = %(wake_at)s, lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
 WHERE run_id = %(run_id)s AND lease_owner = %(owner)s
RETURNING run_id
"""

NODE_STATUS = "SELECT status FROM {s}.nodes WHERE run_id = %s AND exec_key = %s"

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
