"""Compile a flow AST into a ``networkx.DiGraph`` and validate it.

Node ids are paths of child indexes from the root (``"0"``, ``"0.2"``, ``"0.2.1"``), so the
same text always gives the same ids. Each edge goes from a node to one of its children and
carries its ``order``. The graph hash is the SHA-256 of the canonical flow text, so it only
changes when the flow's meaning changes (not its whitespace or comments).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from dbt_durable.bulk import bulk_allocation
from dbt_durable.errors import FlowError
from dbt_durable.flow import ast as A
from dbt_durable.flow.parser import parse
from dbt_durable.flow.printer import to_text
from dbt_durable.flow.refs import find_refs
from dbt_durable.graph import plan as plan_format

ROOT = "0"
ARGS = "@args"  # the node execution that holds a run's evaluated SQL-expression arguments
DEFAULT_MAX_ITERATIONS = 100_000  # a loop's default max_iterations (pg_durable's fixed cap)
# Leaf kinds that checkpoint; break is a leaf too, but it never checkpoints.
_STEPS = frozenset(kind for kind in A.STEP_KINDS if kind is not A.Break)
MAX_DEPTH = 200
MAX_NODES = 1_000_000


@dataclass(frozen=True)
class FlowGraph:
    """A validated flow: its AST, canonical text, hash, and an index of its nodes by id.

    The runner walks ``children`` and ``node`` (plain dicts). The networkx ``graph`` is built
    on first use (``explain``, inspection), so starting or resuming a run never pays for it.
    """

    ast: A.Node
    text: str
    graph_hash: str
    _children: dict[str, tuple[str, ...]] = field(repr=False, compare=False)
    _asts: dict[str, A.Node] = field(repr=False, compare=False)
    step_ids: frozenset[str] = field(repr=False, compare=False)
    """Ids of the leaf steps (sql, http, sleep, waits; not break, which never checkpoints)."""

    @classmethod
    def of(cls, ast: A.Node, text: str, graph_hash: str) -> FlowGraph:
        """Index ``ast`` (ids are child-index paths from the root)."""
        children: dict[str, tuple[str, ...]] = {}
        asts: dict[str, A.Node] = {}
        steps: list[str] = []
        stack: list[tuple[str, A.Node]] = [(ROOT, ast)]
        pop, push = stack.pop, stack.extend
        while stack:
            node_id, node = pop()
            asts[node_id] = node
            if type(node) in _STEPS:  # most nodes: a leaf step, the short path
                children[node_id] = ()
                steps.append(node_id)
                continue
            kids = A.children(node)
            ids = tuple([f"{node_id}.{i}" for i in range(len(kids))])
            children[node_id] = ids
            push(zip(ids, kids))
        return cls(ast, text, graph_hash, children, asts, frozenset(steps))

    @functools.cached_property
    def replay_results(self) -> frozenset[str]:
        """Ids of the nodes whose stored results a replay reads: every node except a step in a
        sequence that is not the sequence's last item (the walk skips those by their status;
        a sequence's result is its last item's)."""
        skipped = {
            kid
            for node_id, node in self._asts.items()
            if isinstance(node, A.Seq)
            for kid in self._children[node_id][:-1]
            if kid in self.step_ids
        }
        needed = self._asts.keys() - skipped
        return frozenset(needed | {ARGS} if self.expressions else needed)

    @functools.cached_property
    def expressions(self) -> tuple[tuple[str, str, str], ...]:
        """(node id, field, SQL) of every SQL-expression argument (see ``A.EXPR``), in node
        id order: the database evaluates them when the run starts."""
        found = []
        for node_id in sorted(self._asts):
            node = self._asts[node_id]
            for name in A.expr_fields(node):
                value = getattr(node, name)
                if A.is_expr(value):
                    found.append((node_id, name, A.expr_text(value)))
        return tuple(found)

    @functools.cached_property
    def bound_names(self) -> frozenset[str]:
        """Every name a ``|=>`` / ``as()`` of the flow binds. A ``$name`` that none binds is
        left as written (pg_durable's rule)."""
        return frozenset(n.name for n in self._asts.values() if isinstance(n, A.Bind))

    def children(self, node_id: str) -> tuple[str, ...]:
        """Child ids of ``node_id`` in evaluation order."""
        return self._children[node_id]

    def node(self, node_id: str) -> A.Node:
        return self._asts[node_id]

    def __len__(self) -> int:
        """The number of nodes."""
        return len(self._asts)

    @functools.cached_property
    def graph(self) -> nx.DiGraph:
        """The flow as a networkx DiGraph (see :func:`build_graph`), built on first use."""
        return build_graph(self.ast)

    def label(self, node_id: str) -> str:
        """A short description of the node, for explain and the stored graph."""
        return _label(self.node(node_id))

    def to_json(self) -> dict[str, Any]:
        """A JSON summary stored with each run (ids, kinds, labels)."""
        return {
            "root": ROOT,
            "nodes": [
                {"id": n, "kind": A.kind_of(node), "label": _label(node)} for n, node in self._asts.items()
            ],
        }


def _label(node: A.Node) -> str:
    if isinstance(node, A.Sql):
        text = " ".join((A.expr_text(node.text) if A.is_expr(node.text) else node.text).split())
        return text if len(text) <= 60 else text[:57] + "..."
    if isinstance(node, A.Bind):
        return f"${node.name}"
    if isinstance(node, A.IfRows):
        return f"${node.name}"
    if isinstance(node, (A.Seq, A.Join, A.Race, A.If, A.Loop)):
        return A.kind_of(node)
    return to_text(node)


def build_graph(ast: A.Node) -> nx.DiGraph:
    """The DiGraph of ``ast``: one node per AST node (attributes ``kind``, ``depth`` and
    ``ast``), edges parent -> child with their ``order``."""
    nodes: list[tuple[str, dict[str, Any]]] = []
    edges: list[tuple[str, str, dict[str, int]]] = []
    stack: list[tuple[str, A.Node, int]] = [(ROOT, ast, 0)]
    while stack:
        node_id, node, depth = stack.pop()
        nodes.append((node_id, {"kind": A.kind_of(node), "depth": depth, "ast": node}))
        for i, kid in enumerate(A.children(node)):
            kid_id = f"{node_id}.{i}"
            edges.append((node_id, kid_id, {"order": i}))
            stack.append((kid_id, kid, depth + 1))
    graph = nx.DiGraph()
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
    # SQL expressions are evaluated when the run starts; their references are checked then.
    if isinstance(node, A.Sql):
        return [] if A.is_expr(node.text) else [node.text]
    if isinstance(node, A.Http):
        fields = (node.url, node.body, node.headers, getattr(node, "parts", None))
        return [t for t in fields if t and not A.is_expr(t)]
    return []


def validate(ast: A.Node, source: str, origin: str = "<flow>") -> None:
    """Check what the grammar cannot: ``$name`` bindings, depth, size.

    A ``$name`` of a name the flow binds must be bound by a node that runs before the
    reference (earlier in a sequence, or earlier in the same loop body); ``$name?`` is exempt,
    as it reads NULL when unbound. A ``$name`` that nothing in the flow binds is left as
    written when the step runs (pg_durable's rule: ``$1`` in a function body, ``$x`` in a
    regular expression). ``break()`` outside a loop and ``if_rows`` on a name that is not
    bound before it are accepted, as in pg_durable: they fail the run when they execute.
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
                if ref.null_safe or ref.name in bound or ref.name not in all_bound:
                    continue
                why = "is bound only later in the flow"
                offset = ref.start if isinstance(node, A.Sql) else -1
                raise _fail(
                    node,
                    f"${ref.name} {why} (bind it first with |=> '{ref.name}')",
                    source,
                    origin,
                    offset,
                )
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


class FlowCache:
    """Recently compiled flows, least recently used first out, bounded by their total nodes.

    Compiled flows are immutable, so a process that runs the same flow again (a worker, a
    resume, dbt threads) reuses the graph instead of parsing it again.
    """

    def __init__(self, max_nodes: int):
        self.max_nodes = max_nodes
        self._flows: OrderedDict[tuple[str, str], FlowGraph] = OrderedDict()
        self._nodes = 0

    def get(self, key: tuple[str, str]) -> FlowGraph | None:
        flow = self._flows.get(key)
        if flow is not None:
            self._flows.move_to_end(key)
        return flow

    def put(self, key: tuple[str, str], flow: FlowGraph) -> FlowGraph:
        if key not in self._flows:
            self._flows[key] = flow
            self._nodes += len(flow)
            while self._nodes > self.max_nodes and len(self._flows) > 1:
                _, old = self._flows.popitem(last=False)
                self._nodes -= len(old)
        return flow

    def cache_clear(self) -> None:
        """Forget every flow (benchmarks use it to measure what a new process pays)."""
        self._flows.clear()
        self._nodes = 0


# About 1 KB per node (AST and index), so at most ~2 GB in a long-lived worker.
recent = FlowCache(max_nodes=2_000_000)


def compile_flow(source: str, origin: str = "<flow>", validated: bool = False) -> FlowGraph:
    """Parse, validate and index flow text. Raises :class:`FlowError`.

    ``validated``: the text was validated before (a stored run), so validation is skipped.
    """
    key = ("text" if validated else "valid-text", source)
    flow = recent.get(key)
    if flow is not None:
        return flow
    try:
        with bulk_allocation():
            ast = parse(source)
            if not validated:
                validate(ast, source)
            text = to_text(ast)
            flow = FlowGraph.of(ast, text, hashlib.sha256(text.encode()).hexdigest())
    except FlowError as exc:
        raise exc if origin == exc.origin else exc.relocate(origin) from None
    recent.put(("text", source), flow)
    return recent.put(key, flow)


def load_flow(plan_text: str | None, text: str) -> FlowGraph:
    """The flow of a stored run: decoded from its plan (JSON text), or (a run stored before
    plans existed) compiled from its canonical text without validating it again.

    A run's plan is written by the role that submitted it, so the cache key is a hash of the
    plan text itself, computed here: a forged plan can only ever run as its own run."""
    if plan_text is None:
        return compile_flow(text, validated=True)
    key = ("plan", hashlib.sha256(plan_text.encode()).hexdigest())
    flow = recent.get(key)
    if flow is None:
        ast = plan_format.decode(json.loads(plan_text))
        if ast is None:
            return compile_flow(text, validated=True)
        flow = recent.put(key, FlowGraph.of(ast, text, key[1]))
    return flow
