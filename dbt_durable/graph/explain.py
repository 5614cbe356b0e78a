"""Pictures of a flow graph: an indented text tree, Mermaid, Graphviz DOT and SVG.

For a run, each node carries a :class:`NodeState`: the state of its step executions, rolled
up to the composite nodes above them (seq, join, race, if, loop, as), with loop iteration
counts. The rollup never calls a node completed before it is: a sequence with steps still to
run, or a loop between two iterations, is as active as its run.

The SVG is laid out here (an indented tree, one row per node, so any flow stays readable and
its size is linear in its nodes); it needs no system binary and no layout library.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from html import escape

from dbt_durable.flow import ast as A
from dbt_durable.graph.build import ROOT, FlowGraph

STATUS_MARK = {
    "completed": "✓",
    "running": "▶",
    "waiting": "…",
    "failed": "✗",
    "cancelled": "⊘",
    "skipped": "-",
    "pending": " ",
}

STATES = ("pending", "running", "waiting", "completed", "failed", "cancelled", "skipped")
FORMATS = ("text", "mermaid", "dot", "svg")

# Fill, stroke and text colours of each state (the same in SVG, DOT and Mermaid).
COLOURS = {
    "pending": ("#ffffff", "#9e9e9e", "#424242"),
    "running": ("#e3f2fd", "#1565c0", "#0d47a1"),
    "waiting": ("#fff8e1", "#f9a825", "#6d4c00"),
    "completed": ("#e8f5e9", "#2e7d32", "#1b5e20"),
    "failed": ("#ffebee", "#c62828", "#b71c1c"),
    "cancelled": ("#eceff1", "#607d8b", "#37474f"),
    "skipped": ("#fafafa", "#bdbdbd", "#757575"),
}

_URGENT = ("failed", "waiting", "running", "cancelled")


@dataclass
class NodeState:
    """What a run did at one node. For a step: its executions (loop iterations), the latest
    one's state, attempts, duration and error. For a composite node: the rollup below it."""

    state: str = "pending"
    executions: int = 0
    completed: int = 0
    attempts: int = 0
    seconds: float | None = None
    error: str | None = None
    iterations: int | None = None
    extra: dict[str, object] = field(default_factory=dict)


def preorder(flow: FlowGraph) -> list[tuple[str, int]]:
    """(node id, depth) of every node, parents before children, children in order."""
    out: list[tuple[str, int]] = []
    stack = [(ROOT, 0)]
    while stack:
        node_id, depth = stack.pop()
        out.append((node_id, depth))
        for kid in reversed(flow.children(node_id)):
            stack.append((kid, depth + 1))
    return out


def annotate(flow: FlowGraph, steps: Mapping[str, NodeState], run_status: str | None) -> dict[str, NodeState]:
    """Every node's state, from its steps' states (``steps``: by node id; absent = not run).

    A composite node is completed only when its own semantics say so (all of a seq's or
    join's children, one of a race's, a branch of an if) or when a node after it has run or
    the run completed; otherwise, with some progress below, it takes the most urgent state
    below or, without one, the run's activity (running while the run is alive).
    """
    order = preorder(flow)
    index = {node_id: i for i, (node_id, _) in enumerate(order)}
    end: dict[str, int] = {}
    for node_id, _ in reversed(order):
        kids = flow.children(node_id)
        end[node_id] = end[kids[-1]] if kids else index[node_id]
    last_touched = max((index[n] for n in steps if n in index), default=-1)
    finished = run_status in ("completed",)
    alive = run_status in (None, "pending", "running", "waiting")
    partial = "running" if alive else "cancelled"
    out: dict[str, NodeState] = {}
    for node_id, _ in reversed(order):  # children before parents
        node = flow.node(node_id)
        kids = flow.children(node_id)
        if not kids:
            st = steps.get(node_id)
            if st is None:
                out[node_id] = NodeState("skipped" if finished else "pending")
            else:
                out[node_id] = replace(st)
            continue
        below = [out[k] for k in kids]
        states = [b.state for b in below]
        touched = [s for s in states if s not in ("pending", "skipped")]
        agg = NodeState(attempts=max((b.attempts for b in below), default=0))
        errs = [b.error for b in below if b.error and b.state == "failed"]
        agg.error = errs[0] if errs else None
        if isinstance(node, A.Loop):
            agg.iterations = _iterations(flow, node_id, out)
        later = last_touched > end[node_id]
        if not touched:
            agg.state = "skipped" if finished else "pending"
        elif any(s in _URGENT[:3] for s in touched):
            agg.state = next(s for s in _URGENT if s in touched)
        elif _done(node, states) or later or finished:
            agg.state = "completed" if "completed" in touched else touched[0]
        elif "cancelled" in touched:
            agg.state = "cancelled"
        else:
            agg.state = partial
        out[node_id] = agg
    return out


def _done(node: A.Node, states: list[str]) -> bool:
    """Whether a composite node's own semantics make it complete with these child states."""
    ok = [s in ("completed", "skipped") for s in states]
    if isinstance(node, A.Race):
        return "completed" in states
    if isinstance(node, A.If):
        return states[0] == "completed" and any(s == "completed" for s in states[1:])
    if isinstance(node, A.IfRows):
        return "completed" in states
    if isinstance(node, A.Loop):
        return False  # a loop is done only when something after it ran, or the run finished
    return all(ok) and "completed" in states


def _iterations(flow: FlowGraph, loop_id: str, states: Mapping[str, NodeState]) -> int:
    """Iterations of a loop: the most executions of a step directly in its body (steps of a
    nested loop count that loop's iterations)."""
    best = 0
    stack = list(flow.children(loop_id))
    while stack:
        node_id = stack.pop()
        if isinstance(flow.node(node_id), A.Loop):
            continue
        kids = flow.children(node_id)
        if not kids:
            best = max(best, states[node_id].executions)
        stack.extend(kids)
    return best


def rollup(flow: FlowGraph, statuses: Mapping[str, str]) -> dict[str, str]:
    """Statuses of step nodes extended to their ancestors (see :func:`annotate`)."""
    states = annotate(flow, {k: NodeState(v, executions=1) for k, v in statuses.items()}, None)
    return {k: v.state for k, v in states.items()}


def _describe(flow: FlowGraph, node_id: str) -> str:
    node = flow.node(node_id)
    kind = A.kind_of(node)
    label = flow.label(node_id)
    if isinstance(node, A.Bind):
        return f"as {label}"
    return kind if label == kind else f"{kind}  {label}"


def _edge_label(flow: FlowGraph, parent: str, i: int) -> str:
    node = flow.node(parent)
    if isinstance(node, A.If):
        return ("cond", "then", "else")[min(i, 2)]
    if isinstance(node, A.IfRows):
        return ("then", "else")[min(i, 1)]
    if isinstance(node, A.Loop):
        return ("body", "while")[min(i, 1)]
    if isinstance(node, A.Seq):
        return str(i + 1)
    return ""


def _counts(st: NodeState, with_time: bool = True) -> str:
    bits = []
    if st.iterations:
        bits.append(f"×{st.iterations} iteration{'s' if st.iterations != 1 else ''}")
    elif st.executions > 1:
        bits.append(f"×{st.executions}")
    if st.attempts > 1:
        bits.append(f"{st.attempts} attempts")
    if with_time and st.seconds is not None:
        bits.append(f"{st.seconds:.2f}s")
    return ", ".join(bits)


def explain(
    flow: FlowGraph, statuses: Mapping[str, str] | None = None, states: Mapping[str, NodeState] | None = None
) -> str:
    """One line per node: id, kind and label, indented by depth.

    ``statuses`` maps step ids to the status of their latest execution (``states``: full
    :class:`NodeState` for every node, from :func:`annotate`); nodes without one are pending.
    """
    if states is None and statuses is not None:
        states = annotate(flow, {k: NodeState(v, executions=1) for k, v in statuses.items()}, None)
    lines: list[str] = []
    for node_id, depth in preorder(flow):
        text = _describe(flow, node_id)
        prefix = ""
        suffix = ""
        if states is not None:
            st = states.get(node_id, NodeState())
            prefix = f"{STATUS_MARK.get(st.state, ' ')} {st.state:<9} "
            counts = _counts(st)
            suffix = f"  [{counts}]" if counts else ""
            if st.error and not flow.children(node_id):
                suffix += "  " + st.error.splitlines()[0][:120]
        lines.append(f"{prefix}{'  ' * depth}{node_id:<8} {text}{suffix}")
    return "\n".join(lines)


def _mermaid_id(node_id: str) -> str:
    return "n" + node_id.replace(".", "_")


def _mermaid_text(text: str) -> str:
    return escape(text, quote=True).replace("#", "#35;")


def mermaid(flow: FlowGraph, states: Mapping[str, NodeState] | None = None) -> str:
    """A Mermaid ``flowchart`` of the graph (a dbt docs page can embed it); with ``states``
    each node is coloured by its state and shows its iteration counts."""
    lines = ["flowchart TD"]
    for node_id, _ in preorder(flow):
        label = _mermaid_text(f"{node_id} {_describe(flow, node_id)}")
        if states is not None:
            st = states.get(node_id, NodeState())
            counts = _counts(st)
            label += "<br/>" + _mermaid_text(st.state + (f" {counts}" if counts else ""))
        lines.append(f'    {_mermaid_id(node_id)}["{label}"]')
    for node_id, _ in preorder(flow):
        for i, kid in enumerate(flow.children(node_id)):
            edge = _edge_label(flow, node_id, i)
            arrow = f" -->|{edge}| " if edge else " --> "
            lines.append(f"    {_mermaid_id(node_id)}{arrow}{_mermaid_id(kid)}")
    if states is not None:
        for state, (fill, stroke, colour) in COLOURS.items():
            lines.append(f"    classDef {state} fill:{fill},stroke:{stroke},color:{colour}")
        for node_id, _ in preorder(flow):
            lines.append(f"    class {_mermaid_id(node_id)} {states.get(node_id, NodeState()).state}")
    return "\n".join(lines)


def _dot_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def dot(flow: FlowGraph, states: Mapping[str, NodeState] | None = None) -> str:
    """A Graphviz DOT digraph of the graph, coloured by state when ``states`` is given."""
    lines = [
        "digraph flow {",
        "  rankdir=TB;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
    ]
    for node_id, _ in preorder(flow):
        label = f"{node_id} {_describe(flow, node_id)}"
        attrs = ""
        if states is not None:
            st = states.get(node_id, NodeState())
            fill, stroke, colour = COLOURS.get(st.state, COLOURS["pending"])
            counts = _counts(st)
            label += f"\\n{st.state}" + (f" {counts}" if counts else "")
            attrs = f', fillcolor="{fill}", color="{stroke}", fontcolor="{colour}"'
        else:
            attrs = ', fillcolor="#ffffff"'
        lines.append(f'  "{node_id}" [label="{_dot_text(label)}"{attrs}];')
    for node_id, _ in preorder(flow):
        for i, kid in enumerate(flow.children(node_id)):
            edge = _edge_label(flow, node_id, i)
            lines.append(f'  "{node_id}" -> "{kid}"' + (f' [label="{edge}"]' if edge else "") + ";")
    lines.append("}")
    return "\n".join(lines)


ROW_H = 30
INDENT = 26
BOX_W = 520


def svg(flow: FlowGraph, states: Mapping[str, NodeState] | None = None, title: str = "") -> str:
    """An SVG picture: one box per node in an indented tree, connectors from each node to its
    children (with if/loop edge roles), colours by state and iteration counts.

    Each node is a ``<g class="node st-STATE" data-node="ID">``, so a page can restyle it as
    states change."""
    order = preorder(flow)
    depth_max = max((d for _, d in order), default=0)
    width = 20 + depth_max * INDENT + BOX_W + 190
    top = 34 if title else 10
    height = top + len(order) * ROW_H + 10
    row = {node_id: i for i, (node_id, _) in enumerate(order)}
    depth = dict(order)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="flow-graph" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">',
        "<style>"
        + "".join(
            f".st-{s} rect{{fill:{f};stroke:{k}}} .st-{s} text.state{{fill:{c}}} "
            for s, (f, k, c) in COLOURS.items()
        )
        + ".node rect{stroke-width:1.5} .st-skipped rect{stroke-dasharray:4 3} "
        "text.id{fill:#757575} text.role{fill:#9e9e9e;font-size:10px} path.edge{stroke:#9e9e9e;fill:none}"
        "</style>",
    ]
    if title:
        out.append(f'<text x="10" y="20" font-size="14" font-weight="bold">{escape(title)}</text>')

    def y_of(node_id: str) -> int:
        return top + row[node_id] * ROW_H

    for node_id, d in order:
        for i, kid in enumerate(flow.children(node_id)):
            x = 10 + d * INDENT + 10
            y1 = y_of(node_id) + ROW_H - 6
            y2 = y_of(kid) + (ROW_H - 6) // 2
            x2 = 10 + depth[kid] * INDENT
            out.append(f'<path class="edge" d="M{x},{y1} V{y2} H{x2}"/>')
            role = _edge_label(flow, node_id, i)
            if role and not role.isdigit():
                out.append(f'<text class="role" x="{x + 2}" y="{y2 - 3}">{role}</text>')
    for node_id, d in order:
        st = states.get(node_id, NodeState()) if states is not None else NodeState()
        x, y = 10 + d * INDENT, y_of(node_id)
        w = BOX_W + (depth_max - d) * INDENT
        text = _describe(flow, node_id)
        if len(text) > 80:
            text = text[:77] + "..."
        counts = _counts(st) if states is not None else ""
        out.append(
            f'<g class="node st-{st.state}" data-node="{escape(node_id)}" id="node-{escape(node_id)}">'
            f"<title>{escape(node_id)} {escape(_describe(flow, node_id))}</title>"
            f'<rect x="{x}" y="{y}" width="{w}" height="{ROW_H - 6}" rx="5"/>'
            f'<text class="id" x="{x + 6}" y="{y + 16}">{escape(node_id)}</text>'
            f'<text class="label" x="{x + 6 + 8 * max(len(node_id), 3)}" y="{y + 16}">{escape(text)}</text>'
        )
        if states is not None:
            out.append(
                f'<text class="state" x="{x + w + 8}" y="{y + 16}">{escape(st.state)}'
                + (f'<tspan class="counts"> {escape(counts)}</tspan>' if counts else "")
                + "</text>"
            )
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)


def picture(flow: FlowGraph, fmt: str, states: Mapping[str, NodeState] | None = None, title: str = "") -> str:
    """The graph in format ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "text":
        return explain(flow, states=states)
    if fmt == "mermaid":
        return mermaid(flow, states)
    if fmt == "dot":
        return dot(flow, states)
    if fmt == "svg":
        return svg(flow, states, title)
    raise ValueError(f"unknown picture format {fmt!r} (one of {', '.join(FORMATS)})")
