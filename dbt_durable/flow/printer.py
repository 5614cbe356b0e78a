"""Canonical printer: ``parse(to_text(node)) == node`` for every AST the parser produces.

Precedence is PostgreSQL's (see the parser): every binary operator is at one level and
left-associative, so a binary operator's right operand is parenthesized unless it is a step,
a function call or a ``@>`` loop. ``c ?> t`` (an if without else) is parenthesized wherever it
is an operand, since the parser rejects it there bare. A join or race of more than two items
prints as ``join(...)`` / ``race(...)``: ``a & b & c`` would read back as a nested join.
"""

from __future__ import annotations

from decimal import Decimal

from dbt_durable.flow import ast as A

# Binding strength of each printed form; larger binds tighter. _PARTIAL is ``c ?> t``, which
# is only ever printed whole or in parentheses; _BINARY is a chain of binary operators; _PREFIX
# is ``@> x``, which binds tighter than any binary operator, as in PostgreSQL.
_PARTIAL, _BINARY, _PREFIX, _ATOM = range(4)


def quote(text: str) -> str:
    """A flow string literal for ``text``: single quotes, with embedded quotes doubled."""
    return "'" + text.replace("'", "''") + "'"


def _number(value: float) -> str:
    if value == int(value):
        return str(int(value))
    return format(Decimal(repr(value)), "f")


def _options(node: A.Node) -> str:
    if not node.options:
        return ""
    parts = []
    for key, value in node.options:
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = quote(value)
        else:
            text = _number(value) if isinstance(value, float) else str(value)
        parts.append(f"{key}={text}")
    return " with (" + ", ".join(parts) + ")"


def _call(name: str, args: list[str]) -> str:
    return f"{name}(" + ", ".join(args) + ")"


def _opt(value: str | None) -> str:
    return "null" if value is None else _str(value)


def _str(value: str) -> str:
    """A string field: a quoted literal, or a SQL expression as written (see ``A.EXPR``)."""
    return A.expr_text(value) if A.is_expr(value) else quote(value)


def _form(node: A.Node) -> tuple[int, str]:
    """(binding strength, text) of ``node``."""
    if isinstance(node, A.Sql):
        if A.is_expr(node.text):  # sql(...) reads back as the same expression wherever it stands
            return _ATOM, _call("sql", [A.expr_text(node.text)]) + _options(node)
        return _ATOM, quote(node.text) + _options(node)
    if isinstance(node, A.Seq):
        first, *rest = node.items
        return _BINARY, " ~> ".join([_at(first, _BINARY)] + [_at(item, _PREFIX) for item in rest])
    if isinstance(node, (A.Join, A.Race)):
        if len(node.items) != 2:
            return _ATOM, _call(A.kind_of(node), [to_text(item) for item in node.items])
        op = " & " if isinstance(node, A.Join) else " | "
        return _BINARY, _at(node.items[0], _BINARY) + op + _at(node.items[1], _PREFIX)
    if isinstance(node, A.Bind):
        return _BINARY, f"{_at(node.body, _BINARY)} |=> {quote(node.name)}"
    if isinstance(node, A.If):
        text = f"{_at(node.cond, _BINARY)} ?> {_at(node.then, _PREFIX)}"
        if node.orelse is None:
            return _PARTIAL, text
        return _BINARY, f"{text} !> {_at(node.orelse, _PREFIX)}"
    if isinstance(node, A.IfRows):
        args = [quote(node.name), to_text(node.then)]
        if node.orelse is not None:
            args.append(to_text(node.orelse))
        return _ATOM, _call("if_rows", args)
    if isinstance(node, A.Loop):
        if node.cond is None:
            if node.options:  # options follow an operand: the loop in parentheses
                return _ATOM, "(@> " + _at(node.body, _PREFIX) + ")" + _options(node)
            return _PREFIX, "@> " + _at(node.body, _PREFIX)
        return _ATOM, _call("loop", [to_text(node.body), to_text(node.cond)]) + _options(node)
    if isinstance(node, A.Break):
        return _ATOM, _call("break", [] if node.value is None else [_str(node.value)]) + _options(node)
    if isinstance(node, A.Sleep):
        return _ATOM, _call("sleep", [_number(node.seconds)]) + _options(node)
    if isinstance(node, A.WaitSchedule):
        args = [quote(node.cron)] + ([] if node.tz is None else [quote(node.tz)])
        return _ATOM, _call("wait_for_schedule", args) + _options(node)
    if isinstance(node, A.WaitSignal):
        args = [_str(node.name)]
        if node.timeout_s is not None:
            args.append(_number(node.timeout_s))
        return _ATOM, _call("wait_for_signal", args) + _options(node)
    if isinstance(node, A.Http):
        third = node.parts if isinstance(node, A.HttpMultipart) else node.body
        args = [_str(node.url), _str(node.method), _opt(third), _opt(node.headers)]
        args.append("null" if node.timeout_s is None else _number(node.timeout_s))
        while len(args) > 1 and args[-1] == "null":
            args.pop()
        return _ATOM, _call(A.kind_of(node), args) + _options(node)
    raise TypeError(f"not a flow node: {node!r}")


def _at(node: A.Node, minimum: int) -> str:
    strength, text = _form(node)
    return text if strength >= minimum else f"({text})"


def to_text(node: A.Node) -> str:
    """The canonical text of ``node`` on one line."""
    return _form(node)[1]
