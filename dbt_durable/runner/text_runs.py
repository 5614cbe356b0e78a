"""Runs queued as flow text by ``<schema>.start('flow text', 'label')`` (pg_durable's df.start).

Such a run is stored with its text only: no plan, an empty graph and an empty hash, since the
database cannot parse the flow language. :func:`load_text_run` parses and validates the text
when a runner claims the run, and stores the graph, hash and plan through ``adopt_plan`` (a
SECURITY DEFINER function that accepts only the login's own run, and only once), so explain and
instance_nodes show the graph and a resume decodes the plan instead of parsing again.

Guarantee: a text that does not parse or validate raises :class:`TextRunInvalid`, whose message
is the :class:`~dbt_durable.errors.FlowError` with its line, column and caret; the caller fails
the run with it. Nothing is stored for such a run.
"""

from __future__ import annotations

import psycopg
from psycopg import sql
from psycopg.types.json import Json, Jsonb

from dbt_durable.errors import DurableError, FlowError
from dbt_durable.graph.build import FlowGraph, compile_flow
from dbt_durable.graph.plan import encode


class TextRunInvalid(DurableError):
    """The queued flow text does not parse or validate (the message has its position)."""


def is_text_run(plan_text: str | None, graph_hash: str) -> bool:
    """Whether a run row was queued as text by ``start()`` and not parsed yet."""
    return plan_text is None and graph_hash == ""


async def load_text_run(ctl: psycopg.AsyncConnection, schema: str, run_id: str, flow_text: str) -> FlowGraph:
    """Parse and validate ``flow_text`` of run ``run_id`` and store its plan (see the module
    doc). ``ctl`` must log in as the run's submitter (``adopt_plan`` checks it)."""
    try:
        flow = compile_flow(flow_text, origin="<flow>")
    except FlowError as exc:
        raise TextRunInvalid(f"the flow text does not parse: {exc}") from None
    statement = sql.SQL("SELECT {}.adopt_plan(%s, %s, %s, %s)").format(sql.Identifier(schema))
    await ctl.execute(statement, (run_id, Jsonb(flow.to_json()), flow.graph_hash, Json(encode(flow.ast))))
    return flow
