"""The SQL that durable dbt models send (see :mod:`dbt_durable.bridge.models`).

Formatted like :mod:`dbt_durable.store.queries`: ``{s}`` is the quoted state schema. State is
changed only through the runtime's functions (``runtime/migrations/0008_dbt_identity.sql``).
"""

from __future__ import annotations

from psycopg import sql

# A model's runs are keyed by the relation it builds (the flow name) and, with durable_key,
# by that key. The latest run of the login for the relation, with its key, whatever its status.
LATEST_MODEL_RUN = """
SELECT run_id, status, graph_hash, vars, flow_text FROM {s}.runs
 WHERE submitted_by_oid = {s}.session_oid() AND flow_name = %(flow_name)s
   AND run_key IS NOT DISTINCT FROM %(run_key)s
 ORDER BY created_at DESC LIMIT 1
"""

# The node executions of a run that are done (kept by a resume), with their node ids.
COMPLETED_NODES = """
SELECT exec_key, node_id FROM {s}.nodes WHERE run_id = %s AND status = 'completed'
"""

CLAIM_FOR_RESUME = """
SELECT {s}.claim_for_resume(%(run_id)s, %(owner)s, %(ttl)s, %(expected_hash)s, %(flow_text)s,
                            %(graph)s, %(graph_hash)s, %(plan)s)
"""

# The relation's kind ('r' table, 'v' view, 'm' materialized view, 'p' partitioned), if any.
RELATION_KIND = """
SELECT c.relkind::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = %s AND c.relname = %s
"""

# The login's schedules registered by durable models of one dbt project and target.
MODEL_SCHEDULES = """
SELECT name FROM {s}.schedules
 WHERE owner_oid = {s}.session_oid() AND target -> 'dbt' ->> 'project' = %s
   AND target -> 'dbt' ->> 'target' = %s
"""


class DbtQueries:
    """The statements above, formatted for one schema."""

    def __init__(self, schema: str):
        quoted = sql.Identifier(schema).as_string(None)
        for name, text in globals().items():
            if name.isupper() and isinstance(text, str):
                setattr(self, name.lower(), text.replace("{s}", quoted))

    def __getattr__(self, name: str) -> str:  # for type checkers; real values set in __init__
        raise AttributeError(name)
