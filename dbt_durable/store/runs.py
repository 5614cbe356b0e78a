"""The column values of a new run, shared by everything that creates runs from a flow."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Json, Jsonb

from dbt_durable.graph.build import FlowGraph
from dbt_durable.graph.plan import encode


def new_run_params(
    flow: FlowGraph, flow_name: str, run_key: str | None, vars: dict[str, str]
) -> dict[str, Any]:
    """Parameters of ``Queries.insert_run``: the canonical text, the graph summary, its hash,
    the execution plan (so a resume never parses the text again) and the vars."""
    return {
        "flow_name": flow_name,
        "run_key": run_key,
        "flow_text": flow.text,
        "graph": Jsonb(flow.to_json()),
        "graph_hash": flow.graph_hash,
        "plan": Json(encode(flow.ast)),
        "vars": Jsonb(vars),
    }
