"""Compile a flow AST into a ``networkx.DiGraph`` and validate it.

Node ids are paths of child indexes from the root (``"0"``, ``"0.2"``, ``"0.2.1"``), so the
same text always gives the same ids. Each edge goes from a node to one of its children and
carries its ``order``. The graph hash is the SHA-256 of the canonical flow text, so it only
changes when the flow's meaning changes (not its whitespace or comments).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any

import networkx as nx

from dbt_durable.errors import FlowError
from dbt_durable.flow import ast as A
from dbt_durable.flow.parser import parse
from dbt_durable.flow.printer import to_text
from dbt_durable.flow.refs import find_refs

ROOT = "0"
MAX_DEPTH = 200
MAX_NODES = 1_000_000


@dataclass(frozen=True)
class FlowGraph:
    """A validated flow: its AST, canonical text, graph and hash."""

    ast: A.Node
    text: str
    graph: nx.DiGraph
    graph_hash: str

    def children(self, node_id: str) -> list[str]:
        """Child ids of ``node_id`` in evaluation order."""
        kids: list[str] = self.graph.graph["children"][node_id]
        return kids

    @property
    def step_ids(self) -> frozenset[str]:
        """Ids of the leaf steps (sql, http, sleep, waits; not break, which never checkpoints)."""
        steps: frozenset[str] = self.graph.graph["steps"]
        return steps

    def node(self, node_id: str) -> A.Node:
        ast_node: A.Node = self.graph.graph["ast"][node_id]
        return ast_node

    def label(self, node_id: str) -> str:
        """A short description of the node, for explain and the stored graph."""
        return _label(self.node(node_id))

    def to_json(self) -> dict[str, Any]:
        """A JSON summary stored with each run (ids, kinds, labels)."""
        return {
            "root": ROOT,
            "nodes": [
                {"id": n, "kind": d["kind"], "label": self.label(n)} for n, d in self.graph.nodes(data=True)
            ],
        }


def _label(node: A.Node) -> str:
    if isinstance(node, A.Sql):
        text = " ".join(node.text.split())
        return text if len(text) <= 60 else text[:57] + "..."
    if isinstance(node, A.Bind):
        return f"${node.name}"
    if isinstance(node, A.IfRows):
        return f"${node.name}"
    if isinstance(node, (A.Seq, A.Join, A.Race, A.If, A.Loop)):
        return A.kind_of(node)
    return to_text(node)


def build_graph(ast: A.Node) -> nx.DiGraph:
    """The DiGraph of ``ast``: one node per AST node (attributes ``kind`` and ``depth``), edges
    parent -> child with ``order``. The AST of each node is in ``graph.graph["ast"]``."""
    nodes: list[tuple[str, dict[str, Any]]] = []
    edges: list[tuple[str, str, dict[str, int]]] = []
    children: dict[str, list[str]] = {}
    asts: dict[str, A.Node] = {}
    steps: set[str] = set()
    stack: list[tuple[str, A.Node, int]] = [(ROOT, ast, 0)]
    while stack:
        node_id, node, depth = stack.pop()
        kind = A.kind_of(node)
        nodes.append((node_id, {"kind": kind, "depth": depth}))
        asts[node_id] = node
        if isinstance(node, A.STEP_KINDS) and kind != "break":
            steps.add(node_id)
        kids = A.children(node)
        ids = [f"{node_id}.{i}" for i in range(len(kids))]
        children[node_id] = ids
        for i, kid_id in enumerate(ids):
            edges.append((node_id, kid_id, {"order": i}))
            stack.append((kid_id, kids[i], depth + 1))
    graph = nx.DiGraph(children=children, ast=asts, steps=frozenset(steps))
    graph.add_nodes_from(nodes)  # in bulk: several times faster than one call per node
    graph.add_edges_from(edges)
    return graph


def _fail(node: A.Node, message: str, source: str, origin: str, offset_in_text: int = -1) -> FlowError:
    line, col = node.pos.line or 1, node.pos.col or 1
    if offset_in_text >= 0 and isinstance(node, A.Sql):
        before = node.text[:offset_in_text]
        newlines = before.count("\n")
        if newlines:
            line, col = line + newlines, len(before) - before.rfind("\n")
        else:
            col = col + 1 + offset_in_text
    return FlowError(message, source, line, col, origin)


def _texts(node: A.Node) -> list[str]:
    if isinstance(node, A.Sql):
        return [node.text]
    if isinstance(node, A.Http):
        return [t for t in (node.url, node.body, node.headers) if t]
    return []


def validate(ast: A.Node, source: str, origin: str = "<flow>") -> None:
    """Check what the grammar cannot: ``break`` placement, ``$name`` bindings, depth, size.

    A ``$name`` must be bound by a node that runs before the reference (earlier in a sequence,
    or earlier in the same loop body); ``$name?`` is exempt, as it reads NULL when unbound.
    """
    all_bound = {n.name for n in _walk(ast) if isinstance(n, A.Bind)}
    count = 0

    def visit(node: A.Node, bound: frozenset[str], in_loop: bool, depth: int) -> frozenset[str]:
        nonlocal count
        count += 1
        if count > MAX_NODES:
            raise _fail(node, f"flow has more than {MAX_NODES} nodes", source, origin)
        if depth > MAX_DEPTH:
            raise _fail(node, f"flow is nested more than {MAX_DEPTH} levels deep", source, origin)
        for text in _texts(node):
            for ref in find_refs(text):
                if ref.null_safe or ref.name in bound:
                    continue
                why = "is bound only later in the flow" if ref.name in all_bound else "is never bound"
                offset = ref.start if isinstance(node, A.Sql) else -1
                raise _fail(
                    node,
                    f"${ref.name} {why} (bind it first with |=> '{ref.name}')",
                    source,
                    origin,
                    offset,
                )
        if isinstance(node, A.Break) and not in_loop:
            raise _fail(node, "break() outside of a loop", source, origin)
        if isinstance(node, A.IfRows) and node.name not in bound:
            raise _fail(node, f"if_rows('{node.name}'): ${node.name} is not bound before it", source, origin)
        if isinstance(node, A.Seq):
            for item in node.items:
                bound = visit(item, bound, in_loop, depth + 1)
            return bound
        if isinstance(node, (A.Join, A.Race)):
            out = set(bound)
            for item in node.items:
                out |= visit(item, bound, in_loop, depth + 1)
            return frozenset(out)
        if isinstance(node, A.Bind):
            return visit(node.body, bound, in_loop, depth + 1) | {node.name}
        if isinstance(node, A.If):
            after_cond = visit(node.cond, bound, in_loop, depth + 1)
            out = set(visit(node.then, after_cond, in_loop, depth + 1))
            if node.orelse is not None:
                out |= visit(node.orelse, after_cond, in_loop, depth + 1)
            return frozenset(out)
        if isinstance(node, A.IfRows):
            out = set(visit(node.then, bound, in_loop, depth + 1))
            if node.orelse is not None:
                out |= visit(node.orelse, bound, in_loop, depth + 1)
            return frozenset(out)
        if isinstance(node, A.Loop):
            # Names bound later in the body are visible from the second iteration on; a use
            # in the first iteration before its binding fails at run time with a clear error.
            in_body = frozenset(n.name for n in _walk(node.body) if isinstance(n, A.Bind))
            after = visit(node.body, bound | in_body, True, depth + 1)
            if node.cond is not None:
                after = visit(node.cond, after, True, depth + 1)
            return after
        return bound

    visit(ast, frozenset(), False, 0)


def _walk(node: A.Node) -> list[A.Node]:
    out, stack = [], [node]
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(A.children(n))
    return out


@functools.lru_cache(maxsize=64)
def _compiled(source: str, validated: bool) -> FlowGraph:
    ast = parse(source)
    if not validated:
        validate(ast, source)
    text = to_text(ast)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return FlowGraph(ast=ast, text=text, graph=build_graph(ast), graph_hash=digest)


def compile_flow(source: str, origin: str = "<flow>", validated: bool = False) -> FlowGraph:
    """Parse, validate and build the graph of flow text. Raises :class:`FlowError`.

    ``validated``: the text was validated before (a stored run), so validation is skipped.
    """
    # Compiled flows are immutable, so a process that runs the same flow again (a worker, a
    # resume, dbt threads) reuses the graph instead of parsing it again.
    try:
        return _compiled(source, validated)
    except FlowError as exc:
        raise exc if origin == exc.origin else exc.relocate(origin) from None
