"""A run's execution plan: its flow's AST as JSON, stored with the run.

A runner that resumes a run in a new process decodes the plan instead of parsing the flow
text again. Decoding is ``json.loads`` plus one object per node, several times cheaper than
tokenizing and parsing, and it needs no validation: the plan was made from a flow that was
validated when the run started.

Guarantees: ``decode(encode(ast)) == ast`` for every AST (source positions, which only
validation errors use, are not kept). A plan of another format version, or none (runs
created before plans existed), is refused with ``None``; the caller then compiles the stored
flow text, which gives the same graph.
"""

from __future__ import annotations

from typing import Any

from dbt_durable.flow import ast as A

PLAN_VERSION = 1

# Per node kind: (class, fields holding one node, fields holding a tuple of nodes, scalar fields).
_SHAPES: dict[str, tuple[type[A.Node], tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "sql": (A.Sql, (), (), ("text",)),
    "seq": (A.Seq, (), ("items",), ()),
    "join": (A.Join, (), ("items",), ()),
    "race": (A.Race, (), ("items",), ()),
    "as": (A.Bind, ("body",), (), ("name",)),
    "if": (A.If, ("cond", "then", "orelse"), (), ()),
    "if_rows": (A.IfRows, ("then", "orelse"), (), ("name",)),
    "loop": (A.Loop, ("body", "cond"), (), ()),
    "break": (A.Break, (), (), ("value",)),
    "sleep": (A.Sleep, (), (), ("seconds",)),
    "wait_for_schedule": (A.WaitSchedule, (), (), ("cron", "tz")),
    "wait_for_signal": (A.WaitSignal, (), (), ("name", "timeout_s")),
    "http": (A.Http, (), (), ("url", "method", "body", "headers", "timeout_s")),
    "http_multipart": (A.HttpMultipart, (), (), ("url", "method", "body", "headers", "timeout_s", "parts")),
}


def encode(ast: A.Node) -> dict[str, Any]:
    """The JSON plan of ``ast``: ``{"version": 1, "root": <node>}``. A SQL step without options
    is its text (a JSON string); any other node is an object with its ``kind``, its fields,
    and ``options`` as ``[[key, value], ...]`` when it has any."""
    return {"version": PLAN_VERSION, "root": _encode(ast)}


def _encode(node: A.Node) -> Any:
    if type(node) is A.Sql and not node.options:
        return node.text  # the most common node, in its shortest form
    kind = A.kind_of(node)
    _, one, many, scalars = _SHAPES[kind]
    out: dict[str, Any] = {"kind": kind}
    for name in scalars:
        out[name] = getattr(node, name)
    for name in one:
        child = getattr(node, name)
        out[name] = None if child is None else _encode(child)
    for name in many:
        out[name] = [_encode(item) for item in getattr(node, name)]
    if node.options:
        out["options"] = [list(pair) for pair in node.options]
    return out


def decode(plan: Any) -> A.Node | None:
    """The AST of a stored plan, or None if ``plan`` is missing or of another version."""
    if not isinstance(plan, dict) or plan.get("version") != PLAN_VERSION:
        return None
    return _decode(plan["root"])


def _decode(obj: Any) -> A.Node:
    if type(obj) is str:
        return A.Sql(text=obj)
    cls, one, many, scalars = _SHAPES[obj["kind"]]
    fields: dict[str, Any] = {name: obj[name] for name in scalars}
    for name in one:
        child = obj[name]
        fields[name] = None if child is None else _decode(child)
    for name in many:
        fields[name] = tuple(map(_decode, obj[name]))
    options = obj.get("options")
    if options:
        fields["options"] = tuple(map(tuple, options))
    return cls(**fields)
