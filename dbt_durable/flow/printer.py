"""Canonical printer: ``parse(to_text(node)) == node`` for every AST the parser produces."""

from __future__ import annotations

from decimal import Decimal

from dbt_durable.flow import ast as A

# Binding strength of each printed form; larger binds tighter.
_LOOP, _IF, _SEQ, _RACE, _JOIN, _BIND, _ATOM = range(7)


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
    return "null" if value is None else quote(value)


def _form(node: A.Node) -> tuple[int, str]:
    """(binding strength, text) of ``node``."""
    if isinstance(node, A.Sql):
        return _ATOM, quote(node.text) + _options(node)
    if isinstance(node, A.Seq):
        return _SEQ, " ~> ".join(_at(item, _SEQ + 1) for item in node.items)
    if isinstance(node, A.Race):
        return _RACE, " | ".join(_at(item, _RACE + 1) for item in node.items)
    if isinstance(node, A.Join):
        return _JOIN, " & ".join(_at(item, _JOIN + 1) for item in node.items)
    if isinstance(node, A.Bind):
        return _BIND, f"{_at(node.body, _BIND)} |=> {quote(node.name)}"
    if isinstance(node, A.If):
        text = f"{_at(node.cond, _SEQ)} ?> {_at(node.then, _SEQ)}"
        if node.orelse is not None:
            text += f" !> {_at(node.orelse, _LOOP)}"
        return _IF, text
    if isinstance(node, A.IfRows):
        args = [quote(node.name), to_text(node.then)]
        if node.orelse is not None:
            args.append(to_text(node.orelse))
        return _ATOM, _call("if_rows", args)
    if isinstance(node, A.Loop):
        if node.cond is None:
            return _LOOP, "@> " + _at(node.body, _LOOP)
        return _ATOM, _call("loop", [to_text(node.body), to_text(node.cond)])
    if isinstance(node, A.Break):
        return _ATOM, _call("break", [] if node.value is None else [quote(node.value)]) + _options(node)
    if isinstance(node, A.Sleep):
        return _ATOM, _call("sleep", [_number(node.seconds)]) + _options(node)
    if isinstance(node, A.WaitSchedule):
        args = [quote(node.cron)] + ([] if node.tz is None else [quote(node.tz)])
        return _ATOM, _call("wait_for_schedule", args) + _options(node)
    if isinstance(node, A.WaitSignal):
        args = [quote(node.name)]
        if node.timeout_s is not None:
            args.append(_number(node.timeout_s))
        return _ATOM, _call("wait_for_signal", args) + _options(node)
    if isinstance(node, A.Http):
        args = [quote(node.url), quote(node.method), _opt(node.body), _opt(node.headers)]
        args.append("null" if node.timeout_s is None else _number(node.timeout_s))
        while len(args) > 1 and args[-1] == "null":
            args.pop()
        return _ATOM, _call("http", args) + _options(node)
    raise TypeError(f"not a flow node: {node!r}")


def _at(node: A.Node, minimum: int) -> str:
    strength, text = _form(node)
    return text if strength >= minimum else f"({text})"


def to_text(node: A.Node) -> str:
    """The canonical text of ``node`` on one line."""
    return _form(node)[1]
