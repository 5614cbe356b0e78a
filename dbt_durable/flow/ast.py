"""Typed AST of the flow language.

Every node is an immutable dataclass. Source positions are kept for error messages but are
excluded from equality, so ``parse(print(parse(x))) == parse(x)`` holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

OptionValue = int | float | str | bool


@dataclass(frozen=True)
class Pos:
    """A 1-based line and column in the flow text."""

    line: int
    col: int


NOWHERE = Pos(0, 0)


@dataclass(frozen=True)
class Node:
    """Base of every AST node; ``options`` are the ``with (...)`` node options."""

    pos: Pos = field(default=NOWHERE, compare=False, repr=False, kw_only=True)
    options: tuple[tuple[str, OptionValue], ...] = field(default=(), kw_only=True)

    def option(self, name: str, default: OptionValue | None = None) -> OptionValue | None:
        for key, value in self.options:
            if key == name:
                return value
        return default


@dataclass(frozen=True)
class Sql(Node):
    text: str


@dataclass(frozen=True)
class Seq(Node):
    """``a ~> b ~> c``: items run in order; the result is the last item's. Never nests a Seq."""

    items: tuple[Node, ...]


@dataclass(frozen=True)
class Join(Node):
    """``a & b``: items run in parallel; the result is the array of their results."""

    items: tuple[Node, ...]


@dataclass(frozen=True)
class Race(Node):
    """``a | b``: items run in parallel; the first to succeed wins, the others are cancelled."""

    items: tuple[Node, ...]


@dataclass(frozen=True)
class Bind(Node):
    """``x |=> 'name'``: x's result is bound as ``$name``."""

    body: Node
    name: str


@dataclass(frozen=True)
class If(Node):
    """``c ?> t !> e``; ``orelse`` is None when there is no ``!>`` branch."""

    cond: Node
    then: Node
    orelse: Node | None


@dataclass(frozen=True)
class IfRows(Node):
    """``if_rows('name', t, e)``: branch on whether ``$name`` has rows."""

    name: str
    then: Node
    orelse: Node | None


@dataclass(frozen=True)
class Loop(Node):
    """``@> body`` (forever) or ``loop(body, cond)`` (do-while cond)."""

    body: Node
    cond: Node | None


@dataclass(frozen=True)
class Break(Node):
    value: str | None


@dataclass(frozen=True)
class Sleep(Node):
    seconds: float


@dataclass(frozen=True)
class WaitSchedule(Node):
    cron: str
    tz: str | None


@dataclass(frozen=True)
class WaitSignal(Node):
    name: str
    timeout_s: float | None


@dataclass(frozen=True)
class Http(Node):
    url: str
    method: str
    body: str | None
    headers: str | None
    timeout_s: float | None


@dataclass(frozen=True)
class HttpMultipart(Http):
    """``http_multipart(url, method, parts, headers, timeout_s)``: a ``multipart/form-data``
    request; ``parts`` is a JSON array of ``{name, data_b64[, filename, content_type]}``.
    ``body`` is always None."""

    parts: str | None = None


COMPOUND = (Seq, Join, Race, Bind, If, IfRows, Loop)
STEP_KINDS = (Sql, Break, Sleep, WaitSchedule, WaitSignal, Http, HttpMultipart)

# A string field whose value is a SQL expression (``'SELECT ' || '1'``,
# ``current_setting('app.url') || '/x'``) holds EXPR + the expression's text; the database
# evaluates it when the run starts (see dbt_durable.runner.walker). NUL never occurs in flow
# text (Postgres text cannot hold it), so no literal can be mistaken for an expression.
EXPR = "\x00sql:"


def is_expr(value: object) -> bool:
    """Whether ``value`` is a SQL expression to evaluate when the run starts."""
    return isinstance(value, str) and value.startswith(EXPR)


def expr_text(value: str) -> str:
    """The SQL of an expression value (see :data:`EXPR`)."""
    return value[len(EXPR) :]


def expr_fields(node: Node) -> tuple[str, ...]:
    """The names of ``node``'s string fields that may hold a SQL expression."""
    if isinstance(node, Sql):
        return ("text",)
    if isinstance(node, HttpMultipart):
        return ("url", "method", "parts", "headers")
    if isinstance(node, Http):
        return ("url", "method", "body", "headers")
    if isinstance(node, Break):
        return ("value",)
    if isinstance(node, WaitSignal):
        return ("name",)
    return ()


def children(node: Node) -> tuple[Node, ...]:
    """The direct sub-expressions of ``node``, in evaluation order."""
    if isinstance(node, (Seq, Join, Race)):
        return node.items
    if isinstance(node, Bind):
        return (node.body,)
    if isinstance(node, If):
        return (node.cond, node.then) + ((node.orelse,) if node.orelse is not None else ())
    if isinstance(node, IfRows):
        return (node.then,) + ((node.orelse,) if node.orelse is not None else ())
    if isinstance(node, Loop):
        return (node.body,) + ((node.cond,) if node.cond is not None else ())
    return ()


def kind_of(node: Node) -> str:
    """The lower-case kind name used in the graph, the state tables and ``explain``."""
    return {
        Sql: "sql",
        Seq: "seq",
        Join: "join",
        Race: "race",
        Bind: "as",
        If: "if",
        IfRows: "if_rows",
        Loop: "loop",
        Break: "break",
        Sleep: "sleep",
        WaitSchedule: "wait_for_schedule",
        WaitSignal: "wait_for_signal",
        Http: "http",
        HttpMultipart: "http_multipart",
    }[type(node)]
