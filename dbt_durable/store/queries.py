"""Every SQL statement the Python side sends, in one place.

``{s}`` stands for the quoted state schema; :class:`Queries` formats them once per schema.
The state-changing logic that must be atomic (fencing, checkpoints) lives in SQL functions
in ``runtime/migrations``.
"""

from __future__ import annotations

from psycopg import sql

# Runs are created (and retired) only through the runtime's functions; see
# runtime/migrations/0007_security.sql. With ``owner`` the run is created already claimed.
CREATE_RUN = """
SELECT run_id, created, status, graph_hash, vars FROM {s}.create_run(
    %(flow_name)s, %(run_key)s, %(flow_text)s, %(graph)s, %(graph_hash)s, %(plan)s, %(vars)s,
    %(kind)s, %(dbt_args)s, %(owner)s, %(ttl)s)
"""

RECORD_EVENT = "SELECT {s}.record_event(%s, %s, %s)"

# Reads see every run the login may watch (RLS); a login creates, resumes and executes only
# its own runs, so the reads that lead to those filter on the login.
LATEST_UNFINISHED = """
SELECT run_id, false AS created, status, graph_hash, vars FROM {s}.runs
 WHERE submitted_by_oid = {s}.session_oid() AND flow_name = %s
   AND status IN ('pending', 'running', 'waiting', 'failed')
 ORDER BY created_at DESC LIMIT 1
"""

RETIRE_RUN = "SELECT {s}.retire_run(%s, %s)"

GET_RUN = """
SELECT run_id, flow_name, run_key, flow_text, graph_hash, vars, status, submitted_by, lease_owner,
       lease_expires_at, cancel_requested, result, error, failed_node, created_at, started_at,
       finished_at, updated_at, kind, dbt_args, submitted_by_oid, crash_claims
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

LOAD_PLAN_TEXT = "SELECT plan::text FROM {s}.runs WHERE run_id = %s"

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

# Backends of a runner that is gone (or frozen past its lease); its in-flight transactions roll
# back with them. Only backends of this very login: the lease owner comes from a row the login
# can write, so it is never trusted to reach anyone else's sessions. %(lock)s: the run's lock
# name, whose holder (a frozen runner's control connection) is terminated too.
TERMINATE_OWNER = """
SELECT count(pg_terminate_backend(a.pid, 5000))
  FROM pg_stat_activity a
 WHERE a.usename = session_user AND a.pid <> pg_backend_pid()
   AND (a.application_name = %(app)s OR left(a.application_name, length(%(app)s) + 1) = %(app)s || ':'
        OR a.pid IN (SELECT l.pid FROM pg_locks l
                      WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
                        AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended(%(lock)s, 0)))
"""

TAKE_RUN = """
SELECT taken, status, cancel_requested FROM {s}.take_run(%(run_id)s, %(owner)s, %(ttl)s, %(retry_failed)s,
                                                      %(max_crashes)s)
"""

LEASE_EXPIRED = """
SELECT lease_expires_at < now() FROM {s}.runs WHERE run_id = %s
"""

HEARTBEAT = "SELECT cancel_requested FROM {s}.renew_lease(%s, %s, %s)"

FINISH_RUN = """
SELECT {s}.finish_run(%(run_id)s, %(owner)s, %(status)s, %(result)s, %(error)s, %(failed_node)s,
                      %(wake_at)s, %(waiting_for)s)
"""

NODE_STATUS = "SELECT status FROM {s}.nodes WHERE run_id = %s AND exec_key = %s"

# Shutdown: hand the run back at once.
RELEASE_LEASE = "SELECT {s}.release_lease(%s, %s)"

# A worker takes due runs of its login; SKIP LOCKED lets many workers share the queue.
CLAIM_RUNNABLE = "SELECT run_id, orphaned FROM {s}.claim_runs(%(ttl)s, %(limit)s)"

NEXT_WAKE = "SELECT {s}.next_wake()"

WORKER_HEARTBEAT = "SELECT {s}.worker_beat(%s, %s, %s)"

WORKER_GONE = "SELECT {s}.worker_gone(%s)"

DUE_SCHEDULES = """
SELECT name, cron, tz, target, catchup, max_catchup, last_fired_slot, created_at, overlap
  FROM {s}.lock_schedules()
"""

UNFINISHED_RUN = """
SELECT run_id FROM {s}.runs
 WHERE submitted_by_oid = {s}.session_oid() AND flow_name = %s AND status IN ('pending', 'running', 'waiting')
 ORDER BY created_at DESC LIMIT 1
"""

SCHEDULE_FIRED = "SELECT {s}.schedule_fired(%s, %s, %s)"

UPSERT_SCHEDULE = """
SELECT {s}.save_schedule(%(name)s, %(cron)s, %(tz)s, %(target)s, %(catchup)s, %(max_catchup)s, %(overlap)s)
"""

LIST_SCHEDULES = """
SELECT name, cron, tz, target, catchup, max_catchup, overlap, paused, last_fired_slot, created_at,
       created_by, last_error
  FROM {s}.schedules ORDER BY name, created_by
"""

PAUSE_SCHEDULE = "SELECT {s}.pause_schedule(%s, %s)"

REMOVE_SCHEDULE = "SELECT {s}.remove_schedule(%s)"

CHECKPOINT = "SELECT {s}.checkpoint_node(%s, %s, %s, %s, %s, %s, %s, %s)"

MARK_NODE = "SELECT {s}.mark_node(%s, %s, %s, %s, %s, %s, %s, %s, %s)"

CONSUME_SIGNAL = """
SELECT payload, sent_at FROM {s}.consume_signal(%(run_id)s, %(owner)s, %(name)s, %(exec_key)s)
"""

SEND_SIGNAL = "SELECT {s}.signal(%s, %s, %s)"

CANCEL_RUN = "SELECT {s}.cancel(%s, %s)"

# Short runs in one transaction (runner/batch.py): take pending runs under row locks, finish
# each in the same transaction, hand the others to the ordinary path.
TAKE_PENDING = "SELECT run_id, kind, plan, flow_text, vars FROM {s}.take_pending(%s)"

FINISH_PENDING = "SELECT {s}.finish_pending(%s, %s, %s, %s, %s, %s)"

HAND_OVER = "SELECT {s}.hand_over(%s, %s)"

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
