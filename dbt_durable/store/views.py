"""The SQL of the views (CLI status and explain, the dashboard, metrics): reads only.

Every statement reads through row-level security, so a login sees the runs of the roles it is a
member of and nothing else. State changes go through the runtime's functions
(``runtime/migrations/0009_observability.sql`` adds the ones the views steer with). ``{s}``
stands for the quoted state schema, as in :mod:`dbt_durable.store.queries`.

The per-run reads aggregate node executions in the database (one row per node id, never one
per execution), so a run with a million loop iterations answers as fast as a count can.
"""

from __future__ import annotations

from psycopg import sql

STEP_KINDS = "('sql', 'http', 'sleep', 'wait_for_schedule', 'wait_for_signal', 'dbt_node')"

# Recent runs with their progress: static steps done against the static steps of the graph,
# and loop iterations (exec keys with '#') counted apart. The page of runs is chosen first,
# so the node counts are computed for those runs only.
LIST_RUNS = """
WITH page AS MATERIALIZED (
    SELECT r.run_id, r.flow_name, r.run_key, r.kind, r.status, r.submitted_by, r.dbt_args, r.created_at,
           r.started_at, r.finished_at, r.updated_at, r.failed_node, r.error, r.waiting_for, r.wake_at,
           r.cancel_requested,
           (SELECT count(*) FROM jsonb_array_elements(r.graph -> 'nodes') AS g(node)
             WHERE g.node ->> 'kind' IN {steps}
               AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(r.graph -> 'nodes') AS l(node)
                                WHERE l.node ->> 'kind' = 'loop'
                                  AND g.node ->> 'id' LIKE (l.node ->> 'id') || '.%%')) AS static_total
      FROM {s}.runs r
     WHERE (%(status)s::text IS NULL OR r.status = %(status)s)
       AND (%(flow)s::text IS NULL OR r.flow_name ILIKE %(flow)s)
       AND (%(model)s::text IS NULL OR r.flow_name = %(model)s OR r.flow_name LIKE '%%.' || %(model)s
            OR r.flow_name LIKE '%%."' || %(model)s || '"')
       AND (%(search)s::text IS NULL OR r.run_id::text LIKE %(search)s || '%%'
            OR r.flow_name ILIKE '%%' || %(search)s || '%%' OR r.run_key ILIKE '%%' || %(search)s || '%%'
            OR r.error ILIKE '%%' || %(search)s || '%%')
     ORDER BY r.created_at DESC
     LIMIT %(limit)s
)
SELECT p.*, c.static_done, c.iterations_done, c.failed, c.active, c.executions,
       coalesce(l.iterations, 0) AS compacted_iterations
  FROM page p
  LEFT JOIN LATERAL (
      SELECT count(*) FILTER (WHERE n.status = 'completed' AND strpos(n.exec_key, '#') = 0) AS static_done,
             count(*) FILTER (WHERE n.status = 'completed' AND strpos(n.exec_key, '#') > 0) AS iterations_done,
             count(*) FILTER (WHERE n.status = 'failed') AS failed,
             count(*) FILTER (WHERE n.status IN ('running', 'waiting')) AS active,
             count(*) AS executions
        FROM {s}.nodes n WHERE n.run_id = p.run_id) c ON true
  LEFT JOIN LATERAL (
      SELECT sum(x.compacted) AS iterations FROM {s}.loop_counts(p.run_id) x) l ON true
 ORDER BY p.created_at DESC
"""

GET_RUN = """
SELECT run_id, flow_name, run_key, kind, status, submitted_by, flow_text, plan::text AS plan_text, vars,
       dbt_args, result, error, failed_node, waiting_for, wake_at, cancel_requested, lease_owner,
       lease_expires_at, created_at, started_at, finished_at, updated_at
  FROM {s}.runs WHERE run_id = %s
"""

# Per node id and status: how many executions (loop iterations), attempts and timings. One
# pass over the run's rows with the fewest per-row expressions (the grouping does the rest).
NODE_COUNTS = """
SELECT n.node_id, n.status, count(*) AS executions, max(n.attempts) AS attempts,
       min(n.started_at) AS first_started, max(n.started_at) AS last_started, max(n.finished_at) AS last_finished
  FROM {s}.nodes n WHERE n.run_id = %(run_id)s
 GROUP BY n.node_id, n.status
"""

# The latest execution of each node that is not completed (running, waiting, failed,
# cancelled): its error and wake time. Asked only when NODE_COUNTS shows such executions.
NODE_OPEN = """
SELECT DISTINCT ON (n.node_id) n.node_id, n.exec_key, n.status, n.error, n.started_at, n.finished_at, n.wake_at
  FROM {s}.nodes n WHERE n.run_id = %(run_id)s AND n.status <> 'completed'
 ORDER BY n.node_id, n.started_at DESC, n.exec_key DESC
"""

LOOP_COUNTS = "SELECT node_id, compacted, first_started FROM {s}.loop_counts(%(run_id)s)"

# The executions of one node (its loop iterations), latest first.
NODE_EXECUTIONS = """
SELECT exec_key, status, attempts, result, error, wake_at, started_at, finished_at
  FROM {s}.nodes WHERE run_id = %(run_id)s AND node_id = %(node_id)s
 ORDER BY started_at DESC, exec_key DESC LIMIT %(limit)s
"""

# Results of the latest completed execution of some nodes (binds' bodies, for rendering SQL).
LATEST_RESULTS = """
SELECT DISTINCT ON (node_id) node_id, result FROM {s}.nodes
 WHERE run_id = %(run_id)s AND node_id = ANY(%(node_ids)s) AND status = 'completed'
 ORDER BY node_id, started_at DESC
"""

RUN_EVENTS = """
SELECT event_id, at, kind, exec_key, detail FROM {s}.events
 WHERE run_id = %(run_id)s AND (%(exec_prefix)s::text IS NULL OR exec_key = %(exec_prefix)s
                                OR exec_key LIKE %(exec_prefix)s || '#%%'
                                OR detail ->> 'exec_key' = %(exec_prefix)s)
 ORDER BY event_id DESC LIMIT %(limit)s
"""

RUN_SIGNALS = """
SELECT signal_id, name, sent_at, sent_by, consumed_by, consumed_at FROM {s}.signals
 WHERE run_id = %s ORDER BY signal_id
"""

SIGNAL_STATE = """
SELECT s.consumed_by, s.consumed_at, r.status, r.waiting_for FROM {s}.signals s
  JOIN {s}.runs r USING (run_id) WHERE s.run_id = %s AND s.signal_id = %s
"""

RUN_STATUS = "SELECT status, cancel_requested, error FROM {s}.runs WHERE run_id = %s"

SCHEDULES = """
SELECT s.name, s.cron, s.tz, s.target, s.catchup, s.max_catchup, s.overlap, s.paused, s.last_fired_slot,
       s.created_at, s.created_by, s.last_error,
       (SELECT coalesce(jsonb_agg(jsonb_build_object('run_id', r.run_id, 'slot', r.run_key, 'status', r.status)
                                  ORDER BY r.created_at DESC), '[]')
          FROM (SELECT * FROM {s}.runs r
                 WHERE r.flow_name = coalesce(s.target ->> 'flow_name', 'schedule:' || s.name)
                   AND r.submitted_by_oid = s.owner_oid
                 ORDER BY r.created_at DESC LIMIT 5) r) AS recent_runs
  FROM {s}.schedules s ORDER BY s.name, s.created_by
"""

WORKERS = """
SELECT w.worker_id, w.hostname, w.pid, w.started_at, w.heartbeat_at,
       extract(epoch FROM now() - w.heartbeat_at)::float8 AS heartbeat_age_s,
       (SELECT coalesce(array_agg(r.run_id::text ORDER BY r.run_id), '{}') FROM {s}.runs r
         WHERE r.status = 'running' AND r.lease_expires_at > now()
           AND r.submitted_by_oid = w.login_oid) AS running_runs,
       pg_catalog.pg_get_userbyid(w.login_oid) AS login
  FROM {s}.workers w ORDER BY w.heartbeat_at DESC
"""

# The change feed of the dashboard's one polling loop: a fingerprint per watched run.
RUN_FINGERPRINTS = """
SELECT r.run_id::text, r.status, r.updated_at,
       (SELECT count(*) FROM {s}.nodes n WHERE n.run_id = r.run_id) AS executions,
       (SELECT max(coalesce(n.finished_at, n.started_at)) FROM {s}.nodes n WHERE n.run_id = r.run_id) AS last_change,
       (SELECT count(*) FROM {s}.signals g WHERE g.run_id = r.run_id) AS signals
  FROM {s}.runs r WHERE r.run_id = ANY(%s::uuid[])
"""

LIST_FINGERPRINT = "SELECT count(*), max(updated_at) FROM {s}.runs"

# -- metrics --------------------------------------------------------------------------------

METRIC_RUNS_BY_STATUS = "SELECT status, kind, count(*) FROM {s}.runs GROUP BY status, kind"

METRIC_QUEUE = """
SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
       count(*) FILTER (WHERE status = 'waiting' AND wake_at <= now()) AS waiting_due,
       count(*) FILTER (WHERE status = 'waiting') AS waiting,
       count(*) FILTER (WHERE status = 'running' AND lease_expires_at < now()) AS orphaned,
       coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'pending')), 0)::float8
           AS oldest_pending_s
  FROM {s}.runs WHERE status IN ('pending', 'waiting', 'running')
"""

# Finished node executions of the last %(window)s seconds, by kind, in latency buckets.
METRIC_NODE_LATENCY = """
SELECT kind, status, extract(epoch FROM finished_at - started_at)::float8 AS seconds, attempts
  FROM {s}.nodes
 WHERE finished_at > now() - make_interval(secs => %(window)s) AND status IN ('completed', 'failed')
"""

METRIC_RETRIES = """
SELECT count(*) FROM {s}.events WHERE kind = 'node_retry' AND at > now() - make_interval(secs => %(window)s)
"""

# Claim latency: from a run's creation to its first claim by a runner other than its creator.
METRIC_CLAIM_LATENCY = """
SELECT extract(epoch FROM e.at - r.created_at)::float8
  FROM {s}.events e JOIN {s}.runs r USING (run_id)
 WHERE e.kind = 'run_claimed' AND e.at > now() - make_interval(secs => %(window)s)
   AND (e.detail ->> 'previous_owner') IS NULL
"""

METRIC_WORKERS = """
SELECT worker_id, hostname, extract(epoch FROM now() - heartbeat_at)::float8 FROM {s}.workers
"""


# -- steering and retention (the functions of runtime/migrations/0009_observability.sql) --------

REQUEUE_RUN = "SELECT {s}.requeue_run(%s)"

RESTART_RUN = "SELECT {s}.restart_run(%s, %s)"

PRUNE_RUNS = "SELECT runs_deleted, nodes_deleted FROM {s}.prune_runs(make_interval(secs => %s), %s, %s)"

COMPACT_RUN = "SELECT {s}.compact_run(%s, %s)"

COMPACTABLE_RUNS = """
SELECT r.run_id FROM {s}.runs r
 WHERE r.status IN ('completed', 'cancelled') AND r.finished_at < now() - make_interval(secs => %s)
   AND EXISTS (SELECT 1 FROM {s}.nodes n WHERE n.run_id = r.run_id AND strpos(n.exec_key, '#') > 0)
"""


class ViewQueries:
    """The statements above, formatted for one schema."""

    def __init__(self, schema: str):
        quoted = sql.Identifier(schema).as_string(None)
        for name, text in globals().items():
            if name.isupper() and isinstance(text, str) and name != "STEP_KINDS":
                setattr(self, name.lower(), text.replace("{steps}", STEP_KINDS).replace("{s}", quoted))

    def __getattr__(self, name: str) -> str:  # for type checkers; real values set in __init__
        raise AttributeError(name)
