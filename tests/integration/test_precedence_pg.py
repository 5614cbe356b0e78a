"""Our parser reads every operator expression exactly as PostgreSQL parses pg_durable's.

pg_durable's operators are PostgreSQL operators declared with ``CREATE OPERATOR`` on ``text``,
so PostgreSQL's grammar decides how an expression groups. Here the test server gets stand-in
operators with the same names whose functions return the tree they were applied to
(``seq(a,b)``, ``as(a,x)``, ``join(a,b)``, ``race(a,b)``, ``ifthen(c,t)``, ``else(p,e)``, and
the prefix ``loop(x)``). ``SELECT <expr>`` then shows PostgreSQL's parse, which is compared with
our AST in the same notation.

Two normalizations, both about meaning rather than grouping: a chain of ``~>`` is one flat
``seq`` on our side (its result is the last item's however it nests), so PostgreSQL's nested
``seq`` is flattened too; and pg_durable's ``else(ifthen(c, t), e)`` is ``if(c, t, e)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from dbt_durable.errors import FlowError
from dbt_durable.flow import ast as A
from dbt_durable.flow.parser import parse
from dbt_durable.flow.printer import to_text

Tree = Any  # a leaf's text, or a tuple (kind, *children)

# (operator, function name, tree label); the binary ones take (text, text).
BINARY = [
    ("~>", "t_seq", "seq"),
    ("|=>", "t_as", "as"),
    ("&", "t_join", "join"),
    ("|", "t_race", "race"),
    ("?>", "t_ifthen", "ifthen"),
    ("!>", "t_else", "else"),
]


@pytest.fixture
def pg(space: Any) -> Iterator[psycopg.Connection[Any]]:
    """A connection whose search_path finds the stand-in operators first."""
    with psycopg.connect(space.admin_dsn, autocommit=True) as conn:
        schema = sql.Identifier(space.work)
        for op, fn, label in BINARY:
            conn.execute(
                sql.SQL(
                    "CREATE FUNCTION {s}.{fn}(a text, b text) RETURNS text LANGUAGE sql IMMUTABLE "
                    "AS $$ SELECT {label} || '(' || a || ',' || b || ')' $$"
                ).format(s=schema, fn=sql.Identifier(fn), label=sql.Literal(label))
            )
            conn.execute(
                sql.SQL(
                    "CREATE OPERATOR {s}.{op} (LEFTARG = text, RIGHTARG = text, FUNCTION = {s}.{fn})"
                ).format(s=schema, op=sql.SQL(op), fn=sql.Identifier(fn))
            )
        conn.execute(
            sql.SQL(
                "CREATE FUNCTION {s}.t_loop(a text) RETURNS text LANGUAGE sql IMMUTABLE "
                "AS $$ SELECT 'loop(' || a || ')' $$"
            ).format(s=schema)
        )
        conn.execute(
            sql.SQL("CREATE OPERATOR {s}.@> (RIGHTARG = text, FUNCTION = {s}.t_loop)").format(s=schema)
        )
        conn.execute(sql.SQL("SET search_path = {s}, pg_catalog").format(s=schema))
        yield conn


def postgres_tree(conn: psycopg.Connection[Any], expr: str) -> Tree:
    row = conn.execute(f"SELECT {expr}").fetchone()  # the expression text exactly as written
    assert row is not None
    return _read(row[0])


def _read(text: str) -> Tree:
    """Read ``seq(a,join(b,c))`` into nested tuples."""
    tokens = re.findall(r"[A-Za-z_]+|[(),]", text)
    pos = 0

    def node() -> Tree:
        nonlocal pos
        name = tokens[pos]
        pos += 1
        if pos < len(tokens) and tokens[pos] == "(":
            pos += 1
            kids = [node()]
            while tokens[pos] == ",":
                pos += 1
                kids.append(node())
            assert tokens[pos] == ")"
            pos += 1
            return (name, *kids)
        return name

    tree = node()
    assert pos == len(tokens), text
    return tree


def runnable(tree: Tree) -> bool:
    """Whether pg_durable could run this tree: every ``!>`` completes a ``?>``, and no ``?>``
    without ``!>`` is the left side of another operator (pg_durable would run its JSON as SQL)."""
    if isinstance(tree, str):
        return True
    kind, *kids = tree
    if kind == "else":
        left = kids[0]
        if not (isinstance(left, tuple) and left[0] == "ifthen"):
            return False
        return all(runnable(k) for k in (*left[1:], kids[1]))
    if kids and isinstance(kids[0], tuple) and kids[0][0] == "ifthen" and kind != "loop":
        return False
    return all(runnable(k) for k in kids)


def normalize(tree: Tree) -> Tree:
    """pg_durable's tree in our terms: ``else(ifthen(c,t),e)`` is ``if(c,t,e)``; seq is flat."""
    if isinstance(tree, str):
        return tree
    kind, *kids = tree
    if kind == "else":
        _, cond, then = kids[0]
        return ("if", normalize(cond), normalize(then), normalize(kids[1]))
    if kind == "ifthen":
        return ("if", *map(normalize, kids))
    if kind == "seq":
        flat: list[Tree] = []
        for kid in map(normalize, kids):
            flat.extend(kid[1:] if isinstance(kid, tuple) and kid[0] == "seq" else [kid])
        return ("seq", *flat)
    return (kind, *map(normalize, kids))


def ours(node: A.Node) -> Tree:
    """Our AST in the same notation."""
    if isinstance(node, A.Sql):
        return node.text
    if isinstance(node, A.Bind):
        return ("as", ours(node.body), node.name)
    if isinstance(node, A.If):
        return ("if", *(ours(k) for k in A.children(node)))
    return (A.kind_of(node), *(ours(k) for k in A.children(node)))


def show(tree: Tree) -> str:
    if isinstance(tree, str):
        return tree
    return f"{tree[0]}(" + ", ".join(show(k) for k in tree[1:]) + ")"


# Each expression with its parse, in function-call form; PostgreSQL must agree, and so must we.
CASES = [
    # one level, left-associative
    ("'a' ~> 'b'", "seq(a, b)"),
    ("'a' ~> 'b' ~> 'c'", "seq(a, b, c)"),
    ("'a' & 'b' & 'c'", "join(join(a, b), c)"),
    ("'a' | 'b' | 'c'", "race(race(a, b), c)"),
    ("'a' & 'b' | 'c'", "race(join(a, b), c)"),
    ("'a' | 'b' & 'c'", "join(race(a, b), c)"),
    ("'a' ~> 'b' & 'c'", "join(seq(a, b), c)"),
    ("'a' & 'b' ~> 'c'", "seq(join(a, b), c)"),
    ("'a' ~> 'b' | 'c'", "race(seq(a, b), c)"),
    ("'a' | 'b' ~> 'c'", "seq(race(a, b), c)"),
    ("'a' ~> 'b' | 'c' & 'd'", "join(race(seq(a, b), c), d)"),
    # |=> binds everything to its left
    ("'a' |=> 'x'", "as(a, x)"),
    ("'a' ~> 'b' |=> 'x'", "as(seq(a, b), x)"),
    ("'a' & 'b' |=> 'x'", "as(join(a, b), x)"),
    ("'a' | 'b' |=> 'x'", "as(race(a, b), x)"),
    ("'a' |=> 'x' ~> 'b'", "seq(as(a, x), b)"),
    ("'a' |=> 'x' & 'b' |=> 'y'", "as(join(as(a, x), b), y)"),
    ("'a' |=> 'x' |=> 'y'", "as(as(a, x), y)"),
    ("'a' ~> ('b' |=> 'x')", "seq(a, as(b, x))"),
    ("'a' & ('b' |=> 'x')", "join(a, as(b, x))"),
    # ?> makes a partial if; !> completes it
    ("'c' ?> 't' !> 'e'", "if(c, t, e)"),
    ("'c' ?> 't' !> 'e' ~> 'd'", "seq(if(c, t, e), d)"),
    ("'a' ~> 'c' ?> 't' !> 'e'", "if(seq(a, c), t, e)"),
    ("'c' ?> 't' !> 'e' |=> 'x'", "as(if(c, t, e), x)"),
    ("'c' ?> 't' !> 'e' & 'd'", "join(if(c, t, e), d)"),
    ("'c' ?> ('t' ~> 'u') !> 'e'", "if(c, seq(t, u), e)"),
    ("'c' ?> 't' !> ('e' ~> 'f')", "if(c, t, seq(e, f))"),
    ("'a' ?> 'b' !> 'c' ?> 'd' !> 'e'", "if(if(a, b, c), d, e)"),
    ("'a' ?> 'b' !> ('c' ?> 'd' !> 'e')", "if(a, b, if(c, d, e))"),
    ("('c' ?> 't') !> 'e'", "if(c, t, e)"),
    ("'c' ?> 't'", "if(c, t)"),
    ("'a' ~> 'c' ?> 't'", "if(seq(a, c), t)"),
    ("'a' ~> ('c' ?> 't')", "seq(a, if(c, t))"),
    # @> applies to the operand right after it
    ("@> 'a'", "loop(a)"),
    ("@> 'a' ~> 'b'", "seq(loop(a), b)"),
    ("@> 'x' | 'y'", "race(loop(x), y)"),
    ("@> ('a' ~> 'b')", "loop(seq(a, b))"),
    ("@> ('a' ~> 'b') | 'c'", "race(loop(seq(a, b)), c)"),
    ("'a' ~> @> 'b'", "seq(a, loop(b))"),
    ("'a' ~> @> 'b' ~> 'c'", "seq(a, loop(b), c)"),
    ("@> @> 'a'", "loop(loop(a))"),
    ("@> 'a' |=> 'x'", "as(loop(a), x)"),
    ("@> 'c' ?> 't' !> 'e'", "if(loop(c), t, e)"),
    ("'c' ?> @> 't' !> @> 'e'", "if(c, loop(t), loop(e))"),
    ("'a' & @> 'b' & 'c'", "join(join(a, loop(b)), c)"),
    # parentheses
    ("'a' ~> ('b' ~> 'c')", "seq(a, b, c)"),
    ("'a' & ('b' & 'c')", "join(a, join(b, c))"),
    ("'a' | ('b' | 'c')", "race(a, race(b, c))"),
    ("('a' ~> 'b') & ('c' ~> 'd')", "join(seq(a, b), seq(c, d))"),
    ("'a' ~> ('b' & 'c') ~> 'd'", "seq(a, join(b, c), d)"),
    ("(('a'))", "a"),
    ("'a' ~> ('b' | 'c' |=> 'x') ~> 'd'", "seq(a, as(race(b, c), x), d)"),
]

# PostgreSQL parses these, but into trees pg_durable cannot run (its !> needs a ?> on its left;
# a ?> without !> used as an operator's left side is run as SQL text). We reject them.
REJECTED = [
    "'c' ?> 't' ~> 'u' !> 'e'",  # the old reading: if(c, seq(t, u), e)
    "'c' ?> 't' |=> 'x' !> 'e'",
    "'c' ?> 't' & 'u' !> 'e'",
    "'c' ?> 't' ~> 'u'",
    "'c' ?> 't' |=> 'x'",
    "'c' ?> 't' !> 'e' !> 'f'",
    "'a' !> 'b'",
    "'a' ~> 'b' !> 'c'",
]


def test_the_table_covers_every_operator() -> None:
    text = " ".join(expr for expr, _ in CASES)
    assert len(CASES) >= 40
    for op, _, _ in BINARY:
        assert f" {op} " in text
    assert "@>" in text


@pytest.mark.parametrize(("expr", "expected"), CASES)
def test_postgres_and_our_parser_agree(pg: psycopg.Connection[Any], expr: str, expected: str) -> None:
    theirs = normalize(postgres_tree(pg, expr))
    assert show(theirs) == expected, f"PostgreSQL parses {expr} as {show(theirs)}"
    assert show(ours(parse(expr))) == expected


@pytest.mark.parametrize("expr", REJECTED)
def test_what_pg_durable_cannot_run_is_rejected(pg: psycopg.Connection[Any], expr: str) -> None:
    assert not runnable(postgres_tree(pg, expr))
    with pytest.raises(FlowError):
        parse(expr)


# -- random expressions ---------------------------------------------------------------------

leaf = st.sampled_from(["'a'", "'b'", "'c'", "'d'"])
name = st.sampled_from(["'x'", "'y'"])


def _operand(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(inner.map(lambda e: f"({e})"), inner.map(lambda e: f"@> ({e})"))


def _chain(operands: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    link = st.one_of(
        st.tuples(st.sampled_from(["~>", "&", "|", "?>", "!>"]), operands),
        st.tuples(st.just("|=>"), name),
    )

    def build(parts: tuple[str, list[tuple[str, str]]]) -> str:
        first, links = parts
        return " ".join([first] + [f"{op} {right}" for op, right in links])

    return st.tuples(operands, st.lists(link, max_size=5)).map(build)


def _prefixed(operands: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(operands, operands.map(lambda e: f"@> {e}"))


expressions = st.recursive(
    _chain(_prefixed(leaf)),
    lambda inner: _chain(_prefixed(st.one_of(leaf, _operand(inner)))),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(expressions)
def test_random_expressions_parse_as_postgres_parses_them(pg: psycopg.Connection[Any], expr: str) -> None:
    theirs = postgres_tree(pg, expr)
    try:
        node = parse(expr)
    except FlowError:
        assert not runnable(theirs), f"we reject {expr}, which PostgreSQL reads as {show(theirs)}"
        return
    # We accept a ?> without !> where it stands alone in parentheses; pg_durable cannot run
    # that at all (a deliberate difference), but the grouping must still be PostgreSQL's.
    assert show(ours(node)) == show(normalize(theirs)), expr


operator_leaves = st.sampled_from("abcd").map(A.Sql)


def _operator_trees(kids: st.SearchStrategy[A.Node]) -> st.SearchStrategy[A.Node]:
    pair = st.tuples(kids, kids)
    return st.one_of(
        pair.map(lambda p: A.Seq(tuple(x for k in p for x in (k.items if isinstance(k, A.Seq) else (k,))))),
        pair.map(A.Join),
        pair.map(A.Race),
        st.builds(A.Bind, kids, st.sampled_from(["x", "y"])),
        st.builds(A.If, kids, kids, kids),
        st.builds(A.Loop, kids, st.none()),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.recursive(operator_leaves, _operator_trees, max_leaves=8))
def test_postgres_reads_our_printed_text_as_the_same_tree(pg: psycopg.Connection[Any], node: A.Node) -> None:
    text = to_text(node)
    assert show(normalize(postgres_tree(pg, text))) == show(ours(node)), text
