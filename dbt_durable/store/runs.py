"""Typed rows and the parameters of new runs, shared by everything that creates or reads runs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Json, Jsonb

from dbt_durable.graph.build import FlowGraph
from dbt_durable.graph.plan import encode


@dataclass(frozen=True)
class RunRow:
    """One row of ``Queries.get_run`` (read with ``psycopg.rows.class_row``)."""

    run_id: Any
    flow_name: str
    run_key: str | None
    flow_text: str
    graph_hash: str
    vars: dict[str, str] | None
    status: str
    submitted_by: str
    lease_owner: str | None
    lease_expires_at: datetime | None
    cancel_requested: str | None
    result: Any
    error: str | None
    failed_node: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    kind: str
    dbt_args: dict[str, Any] | None
    submitted_by_oid: int
    crash_claims: int


@dataclass(frozen=True)
class CreatedRun:
    """What ``Queries.create_run`` returns: the new run, or the login's run with that key."""

    run_id: Any
    created: bool
    status: str
    graph_hash: str
    vars: dict[str, str] | None


def new_run_params(
    flow: FlowGraph,
    flow_name: str,
    run_key: str | None,
    vars: dict[str, str],
    owner: str | None = None,
    ttl_s: float = 15.0,
) -> dict[str, Any]:
    """Parameters of ``Queries.create_run`` for a flow: the canonical text, the graph summary,
    its hash, the execution plan (so a resume never parses the text again) and the vars.
    With ``owner`` the run is created already claimed by that runner for ``ttl_s`` seconds."""
    return {
        "flow_name": flow_name,
        "run_key": run_key,
        "flow_text": flow.text,
        "graph": Jsonb(flow.to_json()),
        "graph_hash": flow.graph_hash,
        "plan": Json(encode(flow.ast)),
        "vars": Jsonb(vars),
        "kind": "flow",
        "dbt_args": None,
        "owner": owner,
        "ttl": ttl_s,
    }


def build_run_params(
    flow_name: str, run_key: str | None, target: dict[str, Any], vars: dict[str, str]
) -> dict[str, Any]:
    """Parameters of ``Queries.create_run`` for a durable dbt build of ``target``."""
    return {
        "flow_name": flow_name,
        "run_key": run_key,
        "flow_text": "",
        "graph": Jsonb({"nodes": []}),
        "graph_hash": "",
        "plan": None,
        "vars": Jsonb(vars),
        "kind": "dbt_build",
        "dbt_args": Jsonb(target),
        "owner": None,
        "ttl": 0.0,
    }
