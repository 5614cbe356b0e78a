"""Render a flow graph as an indented tree, optionally with each node's run status."""

from __future__ import annotations

from collections.abc import Mapping

from dbt_durable.graph.build import ROOT, FlowGraph

STATUS_MARK = {
    "completed": "✓",
    "running": "▶",
    "waiting": "…",
    "failed": "✗",
    "cancelled": "⊘",
    "skipped": "-",
}


_RANK = ("failed", "waiting", "running", "cancelled", "completed")


def rollup(flow: FlowGraph, statuses: Mapping[str, str]) -> dict[str, str]:
    """Statuses of step nodes extended to their ancestors: the most urgent status below."""
    out = dict(statuses)
    for node_id in sorted(flow.graph.nodes, key=lambda n: -n.count(".")):
        if node_id in statuses:
            continue
        below = {out[k] for k in flow.children(node_id) if k in out}
        for status in _RANK:
            if status in below:
                out[node_id] = status
                break
    return out


def explain(flow: FlowGraph, statuses: Mapping[str, str] | None = None) -> str:
    """One line per node: id, kind and label, indented by depth.

    ``statuses`` maps node ids to the status of their latest execution; nodes without one are
    shown as pending when ``statuses`` is given.
    """
    lines: list[str] = []
    if statuses is not None:
        statuses = rollup(flow, statuses)
    stack = [(ROOT, 0)]
    while stack:
        node_id, depth = stack.pop()
        data = flow.graph.nodes[node_id]
        label = flow.label(node_id)
        text = data["kind"] if label == data["kind"] else f"{data['kind']}  {label}"
        prefix = ""
        if statuses is not None:
            status = statuses.get(node_id, "pending")
            prefix = f"{STATUS_MARK.get(status, ' ')} {status:<9} "
        lines.append(f"{prefix}{'  ' * depth}{node_id:<8} {text}")
        for kid in reversed(flow.children(node_id)):
            stack.append((kid, depth + 1))
    return "\n".join(lines)
