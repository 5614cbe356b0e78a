"""Parser of the flow language (pg_durable compatible).

Precedence is PostgreSQL's, because pg_durable's operators are PostgreSQL operators declared
with ``CREATE OPERATOR`` on ``text``: every binary operator (``~>``, ``|=>``, ``&``, ``|``,
``?>``, ``!>``) sits at one level ("any other operator" in PostgreSQL's grammar) and is
left-associative; the prefix ``@>`` binds tighter than all of them and applies to the operand
right after it. ``c ?> t`` is a partial if that ``!>`` completes: ``c ?> t !> e`` is
``(c ?> t) !> e``. Our own additions bind tighter still: a ``with (...)`` block attaches to
the step it follows, and ``::type`` casts to the string before them. See docs/flow-language.md.

Shapes: chains of ``~>`` flatten into one :class:`Seq` (its result is the last item's either
way); ``a & b & c`` is ``join(join(a, b), c)`` and ``a | b | c`` is ``race(race(a, b), c)``, as
in PostgreSQL; the n-ary function forms (``join(a, b, c)``, ``join3``) give one flat node.

Guarantee: :func:`parse` either returns an AST or raises :class:`FlowError` with a line, a
column and a caret excerpt. It never raises anything else.
"""

from __future__ import annotations

import bisect
import re
from typing import NamedTuple

from dbt_durable.errors import FlowError
from dbt_durable.flow import ast as A

MAX_NESTING = 200

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|--[^\n]*|/\*)
  | (?P<string>'(?:[^']|'')*')
  | (?P<dollar>\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$)
  | (?P<number>\d+(?:\.\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)
  | (?P<op>\|=>|\|\||~>|\?>|!>|@>|::|&|\||\(|\)|,|=|-)
  | (?P<punct>[-+*/<>%^;\[\].:!?~@|&])
    """,
    re.VERBOSE,
)


class Token(NamedTuple):
    kind: str  # string | number | ident | op | eof
    value: str
    offset: int
    text: str = ""  # the raw source text of the token


def _position(source: str, offset: int) -> tuple[int, int]:
    line = source.count("\n", 0, offset) + 1
    col = offset - (source.rfind("\n", 0, offset) + 1) + 1
    return line, col


def tokenize(source: str, origin: str = "<flow>") -> list[Token]:
    """Split ``source`` into tokens; comments and whitespace are dropped."""
    tokens: list[Token] = []
    pos = 0
    n = len(source)
    if "\x00" in source:
        line, col = _position(source, source.index("\x00"))
        raise FlowError("flow text contains a NUL character", source, line, col, origin)
    while pos < n:
        m = _TOKEN.match(source, pos)
        if m is None:
            line, col = _position(source, pos)
            if source[pos] == "'":
                raise FlowError("unterminated string literal", source, line, col, origin)
            raise FlowError(f"unexpected character {source[pos]!r}", source, line, col, origin)
        kind = m.lastgroup or ""
        if kind == "ws":
            if m.group() == "/*":
                end = source.find("*/", pos + 2)
                if end < 0:
                    line, col = _position(source, pos)
                    raise FlowError("unterminated /* comment", source, line, col, origin)
                pos = end + 2
            else:
                pos = m.end()
            continue
        if kind == "dollar":
            tag = m.group()
            end = source.find(tag, m.end())
            if end < 0:
                line, col = _position(source, pos)
                raise FlowError(f"unterminated {tag} string", source, line, col, origin)
            body = source[m.end() : end]
            tokens.append(Token("string", body, pos, source[pos : end + len(tag)]))
            pos = end + len(tag)
            continue
        raw = m.group()
        value = raw[1:-1].replace("''", "'") if kind == "string" else raw
        tokens.append(Token(kind, value, pos, raw))
        pos = m.end()
    tokens.append(Token("eof", "", n, ""))
    return tokens


# name -> (min args, max args); arguments are checked by the builders below.
FUNCTIONS: dict[str, tuple[int, int]] = {
    "sql": (1, 1),
    "seq": (2, 1_000_000),
    "then": (2, 1_000_000),
    "as": (2, 2),
    "join": (2, 1_000_000),
    "join3": (3, 3),
    "race": (2, 1_000_000),
    "if": (2, 3),
    "if_rows": (2, 3),
    "loop": (1, 2),
    "break": (0, 1),
    "sleep": (1, 1),
    "wait_for_schedule": (1, 2),
    "wait_for_signal": (1, 2),
    "http": (1, 5),
    "http_multipart": (1, 5),
}

BINARY_OPS = frozenset(("~>", "|=>", "&", "|", "?>", "!>"))

HTTP_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD")
MULTIPART_METHODS = ("POST", "PUT", "PATCH")
DEFAULT_HTTP_METHOD = "POST"  # pg_durable's default
# Where a SQL expression may stand for a string (see A.EXPR), for error messages.
EXPR_PLACES = "SQL steps, http()/http_multipart() arguments, break() values and wait_for_signal() names"

OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "retries": (int,),
    "backoff": (str, int, float),
    "timeout": (str, int, float),
    "transaction": (bool,),
    "max_iterations": (int,),  # loops only
    # HTTP flow control (dbt_durable.runner.http_limits)
    "concurrency": (int,),
    "rate": (str,),
    "throttle_wait": (str, int, float),
}
HTTP_ONLY_OPTIONS = ("concurrency", "rate", "throttle_wait")
RATE_TEXT = re.compile(r"^\s*\d+(\.\d+)?\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$", re.IGNORECASE)

# An argument is either an expression or a literal (with its token, for positions).
Arg = tuple[A.Node | str | float | None, Token]


class Parser:
    """Recursive-descent parser over a token list. Use :func:`parse`."""

    def __init__(self, source: str, origin: str = "<flow>"):
        self.source = source
        self.origin = origin
        self.tokens = tokenize(source, origin)
        self.newlines = [i for i, ch in enumerate(source) if ch == "\n"]
        self.i = 0
        self.depth = 0
        # The ``c ?> t`` nodes built so far (by id; kept alive here so ids stay unique). Only
        # these may be completed by ``!>``, even through parentheses, as in PostgreSQL.
        self._partial: dict[int, A.Node] = {}

    # -- helpers ---------------------------------------------------------------------------
    def error(self, message: str, token: Token | None = None) -> FlowError:
        tok = token or self.peek()
        line, col = _position(self.source, tok.offset)
        return FlowError(message, self.source, line, col, self.origin)

    def peek(self) -> Token:
        return self.tokens[self.i]

    def advance(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def at_op(self, op: str) -> bool:
        tok = self.tokens[self.i]
        return tok.kind == "op" and tok.value == op

    def expect_op(self, op: str, context: str) -> Token:
        if not self.at_op(op):
            found = self.peek()
            what = "end of input" if found.kind == "eof" else repr(found.text)
            raise self.error(f"expected {op!r} {context}, found {what}")
        return self.advance()

    def pos_of(self, tok: Token) -> A.Pos:
        # Binary search over the newline offsets: positions stay O(log n) on huge flows.
        line = bisect.bisect_right(self.newlines, tok.offset - 1)
        start = self.newlines[line - 1] + 1 if line else 0
        return A.Pos(line + 1, tok.offset - start + 1)

    # -- grammar ---------------------------------------------------------------------------
    def parse_flow(self) -> A.Node:
        if self.peek().kind == "eof":
            raise self.error("empty flow: expected a SQL string or a node function")
        node = self.expr()
        if self.peek().kind != "eof":
            tok = self.peek()
            raise self.error(f"unexpected {tok.text!r} after a complete expression", tok)
        return node

    def expr(self) -> A.Node:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.error(f"flow is nested more than {MAX_NESTING} levels deep")
        try:
            return self.binary()
        finally:
            self.depth -= 1

    def binary(self) -> A.Node:
        """A left-associative chain of binary operators, all at one precedence level."""
        first = self.peek()
        pos = self.pos_of(first)
        node = self.unary()
        bare_partial = False  # node is a ``c ?> t`` built by this chain, not yet completed
        run: list[A.Node] | None = None  # the items of a ``~>`` run, built into one Seq at its end
        levels = self.depth  # how deep the node being built nests: each operator wraps it once
        while True:
            tok = self.peek()
            op = tok.value if tok.kind == "op" and tok.value in BINARY_OPS else ""
            if run is not None and op != "~>":
                node, run = A.Seq(tuple(run), pos=pos), None
            if not op:
                return node
            if bare_partial and op != "!>":
                raise self.error(
                    f"'?>' without '!>' cannot be the left side of {op!r} (PostgreSQL reads it as "
                    f"(c ?> t) {op} ...): write c ?> (t {op} ...) for a longer branch, "
                    f"or (c ?> t) {op} ... to run the if first",
                    tok,
                )
            if op != "!>" and not (op == "~>" and run is not None):  # '!>' and a longer run: no new level
                levels += 1
                if levels > MAX_NESTING:
                    raise self.error(
                        f"flow is nested more than {MAX_NESTING} levels deep (operators nest to the "
                        "left: write a wide fan-out as join(a, b, ...) or race(a, b, ...))",
                        tok,
                    )
            self.advance()
            bare_partial = False
            if op == "|=>":
                name_tok = self.peek()
                if name_tok.kind != "string":
                    raise self.error("expected a quoted name after '|=>', e.g. |=> 'total'")
                self.advance()
                node = A.Bind(node, self._name(name_tok), pos=pos)
                continue
            if op == "!>":
                partial = self._partial.get(id(node))
                if partial is not node:
                    why = (
                        "its left side is already a complete if-then-else"
                        if isinstance(node, A.If) and node.orelse is not None
                        else "its left side must be a 'c ?> t' expression"
                    )
                    raise self.error(f"'!>' without a preceding '?>': {why}", tok)
                assert isinstance(node, A.If)
                node = A.If(node.cond, node.then, self.unary(), pos=node.pos)
                continue
            right = self.unary()
            if op == "~>":
                if run is None:
                    run = list(_seq_items(node))
                run.extend(_seq_items(right))
            elif op == "&":
                node = A.Join((node, right), pos=pos)
            elif op == "|":
                node = A.Race((node, right), pos=pos)
            else:  # "?>": a partial if; a following '!>' completes it
                node = A.If(node, right, None, pos=pos)
                self._partial[id(node)] = node
                bare_partial = True

    def unary(self) -> A.Node:
        """An operand: ``@>`` (prefix, binds tighter than every binary operator) or a step."""
        if not self.at_op("@>"):
            return self.postfix()
        tok = self.advance()
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                raise self.error(f"flow is nested more than {MAX_NESTING} levels deep")
            return A.Loop(self.unary(), None, pos=self.pos_of(tok))
        finally:
            self.depth -= 1

    def postfix(self) -> A.Node:
        node = self.atom()
        tok = self.peek()
        if tok.kind == "ident" and tok.value.lower() == "with":
            self.advance()
            node = self._with_options(node, tok)
        return node

    def atom(self) -> A.Node:
        tok = self.peek()
        if tok.kind == "op" and tok.value == "(":
            self.advance()
            node = self.expr()
            self.expect_op(")", "to close '('")
            return node
        if tok.kind == "string":
            start = self.i
            self.advance()
            self._skip_cast()
            if self.at_op("||"):
                self.i = start
                return A.Sql(self._sql_expr(), pos=self.pos_of(tok))
            return A.Sql(tok.value, pos=self.pos_of(tok))
        if tok.kind == "ident":
            return self.call()
        if tok.kind == "eof":
            raise self.error("unexpected end of input: expected a SQL string or a node function")
        raise self.error(f"unexpected {tok.text!r}: expected a SQL string or a node function")

    def call(self) -> A.Node:
        tok = self.advance()
        name = tok.value.lower()
        if name.startswith("df."):
            name = name[3:]
        if "." in name:
            raise self.error(f"unknown function {tok.value!r} (only the 'df.' prefix is allowed)", tok)
        if name not in FUNCTIONS:
            known = ", ".join(sorted(FUNCTIONS))
            raise self.error(f"unknown function {tok.value!r}; known functions: {known}", tok)
        self.expect_op("(", f"after {tok.value}")
        args: list[Arg] = []
        if not self.at_op(")"):
            while True:
                args.append(self._arg())
                if self.at_op(","):
                    self.advance()
                    continue
                break
        self.expect_op(")", f"to close {tok.value}(")
        lo, hi = FUNCTIONS[name]
        if not lo <= len(args) <= hi:
            want = str(lo) if lo == hi else (f"at least {lo}" if hi > 1000 else f"{lo} to {hi}")
            raise self.error(f"{name}() takes {want} argument(s), got {len(args)}", tok)
        return self._build(name, args, tok)

    def _arg(self) -> Arg:
        tok = self.peek()
        if (
            tok.kind == "number"
            and self.tokens[self.i + 1].kind == "op"
            and self.tokens[self.i + 1].value == "||"
        ):
            return A.Sql(self._sql_expr(), pos=self.pos_of(tok)), tok
        if tok.kind == "number" or (tok.kind == "op" and tok.value == "-"):
            return self._number(), tok
        nxt = self.tokens[self.i + 1]
        if (
            tok.kind == "ident"
            and "." not in tok.value
            and tok.value.lower() not in FUNCTIONS
            and tok.value.lower() not in ("null", "true", "false")
            and nxt.kind == "op"
            and nxt.value == "("
        ):
            # A SQL function call (current_setting(...), format(...), jsonb_build_array(...)),
            # alone or in a || chain: a SQL expression, evaluated when the run starts.
            return A.Sql(self._sql_expr(), pos=self.pos_of(tok)), tok
        if tok.kind == "ident" and tok.value.lower() in ("null", "true", "false"):
            self.advance()
            return (None if tok.value.lower() == "null" else tok.value.lower()), tok
        return self.expr(), tok

    def _number(self) -> float:
        tok = self.advance()
        sign = 1.0
        if tok.kind == "op":
            sign = -1.0
            tok = self.peek()
            if tok.kind != "number":
                raise self.error("expected a number after '-'")
            self.advance()
        return sign * float(tok.value)

    def _sql_expr(self) -> str:
        """A SQL expression standing for a string: operands (string literals, numbers, SQL
        function calls or parenthesized SQL, each with optional ``::type`` casts) joined by
        ``||``.
        Returns it as an :data:`A.EXPR` value holding its source text."""
        first = self.peek()
        end = first.offset
        while True:
            tok = self.peek()
            if tok.kind in ("string", "number"):
                self.advance()
                end = tok.offset + len(tok.text)
            elif tok.kind == "ident" and self.tokens[self.i + 1].value == "(":
                self.advance()
                end = self._skip_balanced()
            elif tok.kind == "op" and tok.value == "(":  # a parenthesized SQL expression
                end = self._skip_balanced()
            else:
                what = "end of input" if tok.kind == "eof" else repr(tok.text)
                raise self.error(
                    f"expected an operand of a SQL expression (a string, a number or a function call), found {what}"
                )
            while self.at_op("::"):
                self.advance()
                name = self.peek()
                if name.kind != "ident":
                    raise self.error("expected a type name after '::'")
                self.advance()
                end = name.offset + len(name.text)
                while self.peek().kind == "punct" and self.peek().value in "[]":
                    end = self.advance().offset + 1
            if not self.at_op("||"):
                break
            self.advance()
        return A.EXPR + self.source[first.offset : end]

    def _skip_balanced(self) -> int:
        """Skip a parenthesized argument list (of any SQL tokens); the offset after its ')'."""
        depth = 0
        while True:
            tok = self.advance()
            if tok.kind == "eof":
                raise self.error("unterminated '(' in a SQL expression", tok)
            if tok.kind == "op" and tok.value == "(":
                depth += 1
            elif tok.kind == "op" and tok.value == ")":
                depth -= 1
                if depth == 0:
                    return tok.offset + 1

    def _skip_cast(self) -> None:
        # pg_durable accepts '{"k": "v"}'::jsonb for HTTP headers; the cast is informational.
        while self.at_op("::"):
            self.advance()
            if self.peek().kind != "ident":
                raise self.error("expected a type name after '::'")
            self.advance()

    def _with_options(self, node: A.Node, with_tok: Token) -> A.Node:
        self.expect_op("(", "after 'with'")
        options: dict[str, A.OptionValue] = {}
        while True:
            key_tok = self.peek()
            if key_tok.kind != "ident":
                raise self.error("expected an option name, e.g. retries=3")
            self.advance()
            key = key_tok.value.lower()
            if key not in OPTION_TYPES:
                raise self.error(
                    f"unknown option {key_tok.value!r}; options are: {', '.join(OPTION_TYPES)}",
                    key_tok,
                )
            if key in options:
                raise self.error(f"option {key!r} given twice", key_tok)
            self.expect_op("=", f"after option {key!r}")
            options[key] = self._option_value(key, key_tok)
            if self.at_op(","):
                self.advance()
                continue
            break
        self.expect_op(")", "to close the option list")
        if isinstance(node, A.Loop):
            others = sorted(set(options) - {"max_iterations"})
            if others:
                raise self.error(
                    f"{others[0]}= does not apply to a loop (only max_iterations= does)", with_tok
                )
        elif "max_iterations" in options:
            raise self.error(
                "max_iterations= applies to loops only: write loop(body[, cond]) with (max_iterations=N) "
                "or (@> body) with (max_iterations=N)",
                with_tok,
            )
        elif not isinstance(node, A.STEP_KINDS):
            raise self.error("options apply to steps only (sql, http, sleep, waits)", with_tok)
        if "transaction" in options and not isinstance(node, A.Sql):
            raise self.error("transaction= applies to SQL steps only", with_tok)
        for key in HTTP_ONLY_OPTIONS:
            if key in options and not isinstance(node, A.Http):
                raise self.error(f"{key}= applies to http() steps only", with_tok)
        merged = tuple(sorted({**dict(node.options), **options}.items()))
        return _with(node, merged)

    def _option_value(self, key: str, key_tok: Token) -> A.OptionValue:
        tok = self.peek()
        value: A.OptionValue
        if tok.kind == "number":
            self.advance()
            value = int(tok.value) if tok.value.isdigit() else float(tok.value)
        elif tok.kind == "string":
            self.advance()
            value = tok.value
        elif tok.kind == "ident" and tok.value.lower() in ("true", "false"):
            self.advance()
            value = tok.value.lower() == "true"
        else:
            raise self.error(f"expected a value for option {key!r}")
        if not isinstance(value, OPTION_TYPES[key]) or (isinstance(value, bool) and key != "transaction"):
            raise self.error(f"bad value for option {key!r}: {tok.text}", tok)
        if key in ("timeout", "backoff", "throttle_wait"):
            try:
                parse_duration(value)
            except ValueError as exc:
                raise self.error(str(exc), tok) from None
        if key == "retries" and isinstance(value, int) and value < 0:
            raise self.error("retries must be >= 0", tok)
        if key == "max_iterations" and isinstance(value, int) and value < 0:
            raise self.error("max_iterations must be >= 0 (0: no limit)", tok)
        if key == "concurrency" and isinstance(value, int) and value < 1:
            raise self.error("concurrency must be >= 1", tok)
        if key == "rate" and (not RATE_TEXT.match(str(value)) or float(str(value).split("/")[0]) <= 0):
            raise self.error(f"bad rate {tok.text}: write requests per unit, e.g. '50/s', '3000/m'", tok)
        return value

    # -- node builders ---------------------------------------------------------------------
    def _name(self, tok: Token) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", tok.value):
            raise self.error(f"invalid result name {tok.value!r}: use letters, digits and _", tok)
        return tok.value

    def _expr_arg(self, arg: Arg, what: str) -> A.Node:
        value, tok = arg
        if isinstance(value, A.Node):
            return value
        raise self.error(f"{what} must be an expression, not {tok.text}", tok)

    def _string_arg(self, arg: Arg, what: str, allow_expr: bool = False) -> str:
        value, tok = arg
        if isinstance(value, A.Sql) and A.is_expr(value.text) and not value.options:
            if allow_expr:
                return value.text
            raise self.error(
                f"{what} must be a quoted string (SQL expressions are allowed only in {EXPR_PLACES})", tok
            )
        if isinstance(value, A.Sql) and tok.kind == "string" and not value.options:
            return value.text
        raise self.error(f"{what} must be a quoted string", tok)

    def _number_arg(self, arg: Arg, what: str, allow_null: bool = False) -> float | None:
        value, tok = arg
        if value is None and allow_null:
            return None
        if isinstance(value, float):
            if value < 0:
                raise self.error(f"{what} must not be negative", tok)
            return value
        if isinstance(value, A.Sql) and tok.kind == "string":
            try:
                return float(value.text)
            except ValueError:
                pass
        raise self.error(f"{what} must be a number", tok)

    def _opt_string(self, arg: Arg, what: str, allow_expr: bool = False) -> str | None:
        if arg[0] is None:
            return None
        return self._string_arg(arg, what, allow_expr)

    def _literal_name(self, arg: Arg, what: str) -> str:
        """A result name given as a quoted literal (never an expression)."""
        self._string_arg(arg, what)
        return self._name(arg[1])

    def _build(self, name: str, args: list[Arg], tok: Token) -> A.Node:
        pos = self.pos_of(tok)
        if name == "sql":
            return A.Sql(self._string_arg(args[0], "sql() argument", allow_expr=True), pos=pos)
        if name in ("seq", "then"):
            items: list[A.Node] = []
            for arg in args:
                items.extend(_seq_items(self._expr_arg(arg, "seq() argument")))
            return A.Seq(tuple(items), pos=pos)
        if name in ("join", "join3"):
            return A.Join(tuple(self._expr_arg(a, "join() argument") for a in args), pos=pos)
        if name == "race":
            return A.Race(tuple(self._expr_arg(a, "race() argument") for a in args), pos=pos)
        if name == "as":
            return A.Bind(
                self._expr_arg(args[0], "as() body"), self._literal_name(args[1], "as() name"), pos=pos
            )
        if name == "if":
            cond = self._expr_arg(args[0], "if() condition")
            then = self._expr_arg(args[1], "if() then-branch")
            orelse = self._expr_arg(args[2], "if() else-branch") if len(args) > 2 else None
            return A.If(cond, then, orelse, pos=pos)
        if name == "if_rows":
            if args[0][1].kind != "string":
                raise self.error("if_rows() first argument must be a quoted result name", args[0][1])
            ref = self._literal_name(args[0], "if_rows() result name")
            then = self._expr_arg(args[1], "if_rows() then-branch")
            orelse = self._expr_arg(args[2], "if_rows() else-branch") if len(args) > 2 else None
            return A.IfRows(ref, then, orelse, pos=pos)
        if name == "loop":
            loop_body = self._expr_arg(args[0], "loop() body")
            loop_cond = self._expr_arg(args[1], "loop() condition") if len(args) > 1 else None
            return A.Loop(loop_body, loop_cond, pos=pos)
        if name == "break":
            value = self._opt_string(args[0], "break() value", allow_expr=True) if args else None
            return A.Break(value, pos=pos)
        if name == "sleep":
            seconds = self._number_arg(args[0], "sleep() seconds")
            assert seconds is not None
            return A.Sleep(seconds, pos=pos)
        if name == "wait_for_schedule":
            cron = self._string_arg(args[0], "wait_for_schedule() cron expression")
            _check_cron(self, cron, args[0][1])
            tz = self._opt_string(args[1], "time zone") if len(args) > 1 else None
            if tz is not None:
                _check_tz(self, tz, args[1][1])
            return A.WaitSchedule(cron, tz, pos=pos)
        if name == "wait_for_signal":
            signal = self._string_arg(args[0], "wait_for_signal() name", allow_expr=True)
            if signal == "":
                raise self.error("wait_for_signal() name cannot be empty", args[0][1])
            timeout = self._number_arg(args[1], "timeout", allow_null=True) if len(args) > 1 else None
            return A.WaitSignal(signal, timeout, pos=pos)
        # http(url [, method, body, headers, timeout_s]); http_multipart(url [, method, parts, ...])
        multipart = name == "http_multipart"
        url = self._string_arg(args[0], f"{name}() url", allow_expr=True)
        # A URL built from {vars}, $names or an expression is checked when the step runs.
        if not (A.is_expr(url) or "{" in url or "$" in url) and not re.match(
            r"https?://", url, re.IGNORECASE
        ):
            raise self.error(f"{name}() url must start with http:// or https://", args[0][1])
        method = self._opt_string(args[1], f"{name}() method", allow_expr=True) if len(args) > 1 else None
        method = method or DEFAULT_HTTP_METHOD
        allowed = MULTIPART_METHODS if multipart else HTTP_METHODS
        if not A.is_expr(method):
            method = method.upper()
            if method not in allowed:
                raise self.error(f"{name}() method must be one of {', '.join(allowed)}", args[1][1])
        third = (
            self._opt_string(args[2], f"{name}() {'parts' if multipart else 'body'}", True)
            if len(args) > 2
            else None
        )
        headers = self._opt_string(args[3], f"{name}() headers", allow_expr=True) if len(args) > 3 else None
        timeout = self._number_arg(args[4], f"{name}() timeout", allow_null=True) if len(args) > 4 else None
        if not multipart:
            return A.Http(url, method, third, headers, timeout, pos=pos)
        if third is None:
            raise self.error("http_multipart() needs its parts: a JSON array of part objects", tok)
        if not A.is_expr(third):
            _check_parts(self, third, args[2][1])
        return A.HttpMultipart(url, method, None, headers, timeout, parts=third, pos=pos)


def _check_parts(parser: Parser, text: str, tok: Token) -> None:
    """A literal http_multipart() parts list: a non-empty JSON array of objects, each with a
    ``name`` and ``data_b64`` (``filename`` and ``content_type`` optional)."""
    import json

    try:
        parts = json.loads(text)
    except ValueError as exc:
        raise parser.error(f"http_multipart() parts must be a JSON array: {exc}", tok) from None
    if not isinstance(parts, list) or not parts:
        raise parser.error("http_multipart() parts must be a non-empty JSON array of part objects", tok)
    for i, part in enumerate(parts):
        if not isinstance(part, dict) or not isinstance(part.get("name"), str) or "data_b64" not in part:
            raise parser.error(f"http_multipart() part {i} must be an object with 'name' and 'data_b64'", tok)


def _seq_items(node: A.Node) -> tuple[A.Node, ...]:
    return node.items if isinstance(node, A.Seq) and not node.options else (node,)


def _with(node: A.Node, options: tuple[tuple[str, A.OptionValue], ...]) -> A.Node:
    import dataclasses

    return dataclasses.replace(node, options=options)


def _check_cron(parser: Parser, cron: str, tok: Token) -> None:
    from croniter import croniter

    if not croniter.is_valid(cron):
        raise parser.error(f"invalid cron expression {cron!r}", tok)


def _check_tz(parser: Parser, tz: str, tok: Token) -> None:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise parser.error(f"unknown time zone {tz!r}", tok) from None


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: A.OptionValue) -> float:
    """Seconds in a duration: a number of seconds, or text such as '500ms', '30s', '5m', '2h'."""
    if isinstance(value, bool):
        raise ValueError(f"bad duration {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    m = _DURATION.match(value)
    if not m:
        raise ValueError(f"bad duration {value!r}: use e.g. '500ms', '30s', '5m', '2h'")
    return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def parse(source: str, origin: str = "<flow>") -> A.Node:
    """Parse flow text into an AST. Raises :class:`FlowError` (with a position) on bad input."""
    try:
        return Parser(source, origin).parse_flow()
    except RecursionError:
        raise FlowError(f"flow is nested more than {MAX_NESTING} levels deep", source, 1, 1, origin) from None
