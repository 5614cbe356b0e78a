"""The durable run-operations: durable_run, durable_status, durable_signal, durable_cancel.

``durable_run`` compiles the selection with ``dbt compile`` in a subprocess (a nested
dbtRunner would break the calling command's connections), reads the compiled flows from that
manifest, orders the selected durable models as one networkx DAG (through any models in
between), and starts or resumes each model's durable run in dependency order.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import networkx as nx

from dbt_durable.api import Client, check_run_id
from dbt_durable.bridge.models import ModelSpec, publish_shadow, run_model, shadow_identifier
from dbt_durable.config import Settings
from dbt_durable.errors import ConfigError, DurableError, RunNotFound

ACCEPTED: dict[str, dict[str, str]] = {
    "durable_run": {
        "select": "dbt selector or model names (default: every durable model)",
        "vars": "mapping of {name} variables (also passed to dbt as --vars)",
        "fresh": "true to cancel an unfinished run whose flow changed and start over",
        "wait": "false to queue the runs for a worker instead of running them now",
    },
    "durable_status": {"run_id": "one run", "select": "a model name", "limit": "number of runs"},
    "durable_signal": {
        "run_id": "the run",
        "select": "a model name (its latest unfinished run)",
        "name": "signal name",
        "payload": "JSON payload",
    },
    "durable_cancel": {
        "run_id": "the run",
        "select": "a model name (its latest unfinished run)",
        "reason": "why",
    },
}


def check_args(operation: str, args: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` listing the accepted keys if ``args`` has unknown ones."""
    accepted = ACCEPTED[operation]
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        listing = "; ".join(f"{k}: {v}" for k, v in accepted.items())
        raise ConfigError(f"{operation}: unknown argument(s) {', '.join(unknown)}. Accepted keys: {listing}")


def run_operation(name: str, args: dict[str, Any], settings: Settings, config: Any) -> list[str]:
    """Run one durable operation; returns the lines to log."""
    if name not in ACCEPTED:
        raise ConfigError(f"unknown durable operation {name!r}; known: {', '.join(ACCEPTED)}")
    if not isinstance(args, dict):
        raise ConfigError(f"{name}: --args must be a mapping, got {type(args).__name__}")
    # The macros resolve `select` (a model name) to the relation it builds for this target.
    args = dict(args)
    relation = args.pop("relation", None)
    check_args(name, args)
    if relation:
        args["relation"] = relation
    client = Client(settings)
    if name == "durable_run":
        return durable_run(client, settings, config, args)
    if name == "durable_status":
        return durable_status(client, config, args)
    run_id = _target_run(client, config, args, name)
    if name == "durable_signal":
        if not args.get("name"):
            raise ConfigError("durable_signal: 'name' (the signal name) is required")
        signal_id = client.signal(run_id, str(args["name"]), args.get("payload"))
        return [
            f"signal {args['name']!r} sent to run {run_id} (signal id {signal_id}); buffered until consumed"
        ]
    state = client.cancel(run_id, str(args.get("reason") or "cancelled by dbt run-operation"))
    return [f"run {run_id}: {state}"]


def _model_relation(args: dict[str, Any], op: str) -> str:
    """The relation whose runs a ``select`` names (runs are keyed by the relation they build)."""
    if not args.get("relation"):
        raise RunNotFound(f"{op}: no model named {args['select']!r} in this project")
    return str(args["relation"])


def _target_run(client: Client, config: Any, args: dict[str, Any], op: str) -> str:
    if args.get("run_id"):
        return check_run_id(str(args["run_id"]))
    if not args.get("select"):
        raise ConfigError(f"{op}: give run_id, or select (a model name)")
    flow_name = _model_relation(args, op)
    runs = [
        r
        for r in client.list_runs(1000)
        if r["flow_name"] == flow_name and r["status"] in ("pending", "running", "waiting", "failed")
    ]
    if not runs:
        raise RunNotFound(f"{op}: model {args['select']!r} has no unfinished run")
    return str(runs[0]["run_id"])


def durable_status(client: Client, config: Any, args: dict[str, Any]) -> list[str]:
    if args.get("run_id"):
        run = client.get_run(str(args["run_id"]))
        lines = [f"run {run['run_id']} ({run['flow_name']}): {run['status']}"]
        rows = [
            [n["exec_key"], n["kind"], n["status"], str(n["attempts"]), n["error"] or ""]
            for n in client.nodes(str(run["run_id"]))
        ]
        return lines + _table(["node", "kind", "status", "attempts", "error"], rows)
    runs = client.list_runs(int(args.get("limit", 20)))
    if args.get("select"):
        runs = [r for r in runs if r["flow_name"] == _model_relation(args, "durable_status")]
    rows = [
        [
            str(r["run_id"]),
            r["flow_name"],
            r["status"],
            f"{r['nodes_completed']} of {r['graph_nodes']} step(s)"
            + (" (loop iterations count)" if r["nodes_completed"] > r["graph_nodes"] else ""),
            r["failed_node"] or "",
            str(r["created_at"])[:19],
        ]
        for r in runs
    ]
    return _table(["run_id", "flow", "status", "done", "failed node", "created"], rows)


def _table(columns: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max([len(c)] + [len(str(r[i])) for r in rows]) for i, c in enumerate(columns)]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*columns), "-+-".join("-" * w for w in widths)] + [fmt.format(*r) for r in rows]


def _dbt_command() -> list[str]:
    exe = shutil.which("dbt")
    return [exe] if exe else [sys.executable, "-c", "from dbt.cli.main import cli; cli()"]


def compile_selection(config: Any, select: str | None, vars: dict[str, Any]) -> dict[str, Any]:
    """``dbt compile`` the selection in a subprocess; returns its manifest."""
    from dbt.flags import get_flags

    flags = get_flags()
    target_path = tempfile.mkdtemp(prefix="dbt-durable-compile-")
    cmd = _dbt_command() + [
        "compile",
        "--quiet",
        "--project-dir",
        str(config.project_root),
        "--target",
        str(config.target_name),
        "--target-path",
        target_path,
    ]
    profiles_dir = getattr(flags, "PROFILES_DIR", None)
    if profiles_dir:
        cmd += ["--profiles-dir", str(profiles_dir)]
    if select:
        cmd += ["--select", select]
    if vars:
        cmd += ["--vars", json.dumps(vars)]
    env = dict(os.environ, DBT_DURABLE_NESTED="1")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    try:
        if done.returncode != 0:
            raise DurableError(f"dbt compile failed:\n{done.stdout}{done.stderr}")
        manifest: dict[str, Any] = json.loads((Path(target_path) / "manifest.json").read_text())
        return manifest
    finally:
        shutil.rmtree(target_path, ignore_errors=True)


def durable_models(manifest: dict[str, Any]) -> nx.DiGraph:
    """The compiled durable models of ``manifest`` as a DAG (edges through other models too)."""
    every = nx.DiGraph()
    for uid, node in manifest["nodes"].items():
        every.add_node(uid)
        for dep in node.get("depends_on", {}).get("nodes", []):
            every.add_edge(dep, uid)
    chosen = {
        uid
        for uid, node in manifest["nodes"].items()
        if node.get("resource_type") == "model"
        and node.get("config", {}).get("materialized") == "durable"
        and node.get("compiled_code") is not None
    }
    dag = nx.DiGraph()
    for uid in chosen:
        node = manifest["nodes"][uid]
        dag.add_node(
            uid,
            flow=node["compiled_code"],
            schema=node["schema"],
            database=node["database"],
            identifier=node.get("alias") or node["name"],
            relation=node.get("relation_name") or "",
            origin=node["original_file_path"],
            source=node.get("raw_code"),
            mode=node["config"].get("durable_mode", "shadow"),
            key=node["config"].get("durable_key"),
            fresh=bool(node["config"].get("durable_fresh", False)),
        )
        for up in nx.ancestors(every, uid) & chosen:
            dag.add_edge(up, uid)
    return dag


def model_spec(data: dict[str, Any], vars: dict[str, str], fresh: bool) -> ModelSpec:
    """The :class:`ModelSpec` of a compiled durable model of a manifest (see durable_models)."""
    from psycopg import sql

    relation = data["relation"] or ".".join(
        sql.Identifier(x).as_string(None) for x in (data["database"], data["schema"], data["identifier"])
    )
    target = (data["schema"], data["identifier"])
    shadow = None
    if data["mode"] == "shadow":
        shadow = (data["schema"], shadow_identifier(data["identifier"]))
    shadow_relation = None
    if shadow is not None:
        shadow_relation = relation[: relation.rindex(".") + 1] + sql.Identifier(shadow[1]).as_string(None)
    return ModelSpec(
        flow_text=data["flow"],
        origin=data["origin"],
        relation=relation,
        target=target,
        shadow_relation=shadow_relation,
        shadow=shadow,
        source=data["source"],
        key=None if data["key"] in (None, "") else str(data["key"]),
        vars=vars,
        fresh=fresh,
    )


def durable_run(client: Client, settings: Settings, config: Any, args: dict[str, Any]) -> list[str]:
    vars = args.get("vars") or {}
    if not isinstance(vars, dict):
        raise ConfigError("durable_run: 'vars' must be a mapping")
    manifest = compile_selection(config, args.get("select"), vars)
    dag = durable_models(manifest)
    if not dag:
        return [f"durable_run: no durable model matches {args.get('select') or 'the project'}"]
    text_vars = {str(k): str(v) for k, v in vars.items()}
    # dbt run creates model schemas before running models; a run-operation does not.
    client.create_schemas(sorted({dag.nodes[uid]["schema"] for uid in dag}))
    wait = args.get("wait", True) is not False
    fresh = bool(args.get("fresh", False))
    lines, failed = [], False
    order = list(nx.lexicographical_topological_sort(dag))
    for i, uid in enumerate(order, 1):
        data = dag.nodes[uid]
        if failed:
            lines.append(f"{i}/{len(order)} SKIP {uid} (an upstream durable model failed)")
            continue
        spec = model_spec(data, text_vars, fresh or data["fresh"])
        if not wait:
            started = client.start_or_resume(
                spec.build_text, spec.relation, text_vars, spec.fresh, wait=False, origin=data["origin"]
            )
            lines.append(f"{i}/{len(order)} QUEUED {uid}: run {started.run_id}")
            continue
        result = run_model(settings, spec)
        if result.publish and spec.shadow is not None:
            publish_shadow(settings, spec.target, spec.shadow)
        label = {"completed": "OK", "waiting": "WAITING"}.get(result.status, "ERROR")
        lines.append(f"{i}/{len(order)} {label} {uid}: {result.message}")
        failed = result.status not in ("completed", "waiting")
    if failed:
        raise DurableError("\n".join(lines))
    return lines
