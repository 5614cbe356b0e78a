"""The flow language: grammar, precedence, canonical printing, and errors with positions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbt_durable.errors import FlowError
from dbt_durable.flow import ast as A
from dbt_durable.flow.parser import parse
from dbt_durable.flow.printer import to_text


def sql(text: str) -> A.Sql:
    return A.Sql(text)


def test_plain_string_is_a_sql_step_and_df_prefix_is_accepted() -> None:
    assert parse("'SELECT 1'") == sql("SELECT 1")
    assert parse("df.sql('SELECT 1')") == sql("SELECT 1")
    assert parse("$$SELECT 'x'$$") == sql("SELECT 'x'")
    assert parse("$body$SELECT $$nested$$$body$") == sql("SELECT $$nested$$")
    assert parse("'it''s'") == sql("it's")


def test_precedence_is_postgres_one_level_left_associative() -> None:
    # Every binary operator is at one level, left-associative; @> binds its next operand.
    # tests/integration/test_precedence_pg.py checks these groupings against PostgreSQL itself.
    a, b, c, d = sql("a"), sql("b"), sql("c"), sql("d")
    assert parse("'a' ~> 'b' |=> 'x'") == A.Bind(A.Seq((a, b)), "x")
    assert parse("'a' & 'b' |=> 'x'") == A.Bind(A.Join((a, b)), "x")
    assert parse("'a' | 'b' & 'c'") == A.Join((A.Race((a, b)), c))
    assert parse("'a' ~> 'b' | 'c'") == A.Race((A.Seq((a, b)), c))
    assert parse("'a' |=> 'x' ~> 'b'") == A.Seq((A.Bind(a, "x"), b))
    assert parse("'c' ?> 't' !> 'e' ~> 'd'") == A.Seq((A.If(c, sql("t"), sql("e")), d))
    assert parse("'a' ~> 'c' ?> 't' !> 'e'") == A.If(A.Seq((a, c)), sql("t"), sql("e"))
    assert parse("@> 'a' ~> 'b'") == A.Seq((A.Loop(a, None), b))
    assert parse("@> 'x' | 'y'") == A.Race((A.Loop(sql("x"), None), sql("y")))
    assert parse("'a' ~> @> 'b' ~> 'c'") == A.Seq((a, A.Loop(b, None), c))
    assert parse("@> ('a' ~> 'b')") == A.Loop(A.Seq((a, b)), None)
    assert parse("'a' ~> 'b' with (retries=2) ~> 'c'") == A.Seq((a, A.Sql("b", options=(("retries", 2),)), c))


def test_conditional_is_left_associative_and_else_completes_the_partial_if() -> None:
    nested = parse("'a' ?> 'b' !> 'c' ?> 'd' !> 'e'")
    assert nested == A.If(A.If(sql("a"), sql("b"), sql("c")), sql("d"), sql("e"))
    assert parse("'a' ?> 'b' !> ('c' ?> 'd' !> 'e')") == A.If(
        sql("a"), sql("b"), A.If(sql("c"), sql("d"), sql("e"))
    )
    # Parentheses do not change a value in PostgreSQL: ('c' ?> 't') is still a partial if.
    assert parse("('c' ?> 't') !> 'e'") == A.If(sql("c"), sql("t"), sql("e"))
    assert parse("'c' ?> ('t' ~> 'u') !> 'e'") == A.If(sql("c"), A.Seq((sql("t"), sql("u"))), sql("e"))
    # Our addition: an if without else, where it is a whole expression.
    assert parse("'c' ?> 't'") == A.If(sql("c"), sql("t"), None)
    assert parse("('c' ?> 't') ~> 'u'") == A.Seq((A.If(sql("c"), sql("t"), None), sql("u")))
    assert parse("seq('c' ?> 't', 'u')") == A.Seq((A.If(sql("c"), sql("t"), None), sql("u")))


@pytest.mark.parametrize(
    ("text", "col", "message"),
    [
        ("'c' ?> 't' ~> 'u' !> 'e'", 12, "'?>' without '!>' cannot be the left side of '~>'"),
        ("'c' ?> 't' |=> 'x'", 12, "'?>' without '!>' cannot be the left side of '|=>'"),
        ("'c' ?> 't' ?> 'u'", 12, "'?>' without '!>' cannot be the left side of '?>'"),
        ("'c' ?> 't' !> 'e' !> 'f'", 19, "already a complete if-then-else"),
        ("if('c', 't') !> 'e'", 14, "'!>' without a preceding '?>'"),
        ("'a' ~> 'b' !> 'c'", 12, "'!>' without a preceding '?>'"),
    ],
)
def test_what_pg_durable_cannot_run_is_a_positioned_error(text: str, col: int, message: str) -> None:
    with pytest.raises(FlowError) as err:
        parse(text)
    assert (err.value.line, err.value.col) == (1, col)
    assert message in err.value.message


def test_seq_chains_flatten_join_and_race_chains_nest() -> None:
    a, b, c = sql("a"), sql("b"), sql("c")
    assert parse("'a' ~> 'b' ~> 'c'") == parse("seq(seq('a', 'b'), 'c')") == A.Seq((a, b, c))
    assert parse("'a' ~> ('b' ~> 'c')") == A.Seq((a, b, c))
    assert parse("'a' & 'b' & 'c'") == A.Join((A.Join((a, b)), c))
    assert parse("'a' & ('b' & 'c')") == A.Join((a, A.Join((b, c))))
    assert parse("'a' | 'b' | 'c'") == A.Race((A.Race((a, b)), c))
    # The n-ary function forms give one flat node (join3 is pg_durable's).
    assert parse("join('a', 'b', 'c')") == parse("df.join3('a', 'b', 'c')") == A.Join((a, b, c))
    assert parse("race('a', 'b', 'c')") == A.Race((a, b, c))


def test_printer_parenthesizes_what_the_precedence_needs() -> None:
    a, b, c = sql("a"), sql("b"), sql("c")
    cases = [
        (A.Seq((a, A.Bind(b, "x"))), "'a' ~> ('b' |=> 'x')"),
        (A.Bind(A.Seq((a, b)), "x"), "'a' ~> 'b' |=> 'x'"),
        (A.Join((a, A.Join((b, c)))), "'a' & ('b' & 'c')"),
        (A.Join((A.Join((a, b)), c)), "'a' & 'b' & 'c'"),
        (A.Join((a, b, c)), "join('a', 'b', 'c')"),
        (A.Race((a, A.Seq((b, c)))), "'a' | ('b' ~> 'c')"),
        (A.If(a, A.Seq((b, c)), a), "'a' ?> ('b' ~> 'c') !> 'a'"),
        (A.Seq((A.If(a, b, c), a)), "'a' ?> 'b' !> 'c' ~> 'a'"),
        (A.Seq((A.If(a, b, None), c)), "('a' ?> 'b') ~> 'c'"),
        (A.If(a, b, None), "'a' ?> 'b'"),
        (A.Loop(A.Seq((a, b)), None), "@> ('a' ~> 'b')"),
        (A.Race((A.Loop(a, None), b)), "@> 'a' | 'b'"),
        (A.Seq((a, A.Loop(b, None), c)), "'a' ~> @> 'b' ~> 'c'"),
    ]
    for node, text in cases:
        assert to_text(node) == text
        assert parse(text) == node


def test_node_functions() -> None:
    assert parse("sleep(5)") == A.Sleep(5.0)
    assert parse("df.wait_for_signal('approve', 60)") == A.WaitSignal("approve", 60.0)
    assert parse("wait_for_schedule('*/5 * * * *', 'Europe/Paris')") == A.WaitSchedule(
        "*/5 * * * *", "Europe/Paris"
    )
    assert parse("http('https://x.test/a', 'POST', '{}', '{\"A\": \"b\"}'::jsonb, 3)") == A.Http(
        "https://x.test/a", "POST", "{}", '{"A": "b"}', 3.0
    )
    assert parse("if_rows('r', 'a', 'b')") == A.IfRows("r", sql("a"), sql("b"))
    assert parse("loop('a', 'b')") == A.Loop(sql("a"), sql("b"))
    assert parse("as('a', 'n')") == A.Bind(sql("a"), "n")
    assert parse("join3('a', 'b', 'c')") == A.Join((sql("a"), sql("b"), sql("c")))


def test_options_and_comments() -> None:
    node = parse("-- load\n'VACUUM t' with (transaction=false, retries=3, timeout='5m') /* x */")
    assert node == A.Sql("VACUUM t", options=(("retries", 3), ("timeout", "5m"), ("transaction", False)))
    assert node.option("retries") == 3


CASES_WITH_POSITIONS = [
    ("'a' ~>", 1, 7, "unexpected end of input"),
    ("'a' ~>\n  nope('x')", 2, 3, "unknown function 'nope'"),
    ("'a' ~> ('b'", 1, 12, "expected ')'"),
    ("'unterminated", 1, 1, "unterminated string"),
    ("sleep('soon')", 1, 7, "must be a number"),
    ("'a' with (retry=1)", 1, 11, "unknown option"),
    ("'a' with (timeout='5 parsecs')", 1, 19, "bad duration"),
    ("'a' |=> 'bad name'", 1, 9, "invalid result name"),
    ("join('a')", 1, 1, "join() takes at least 2"),
    ("'a' !> 'b'", 1, 5, "'!>' without"),
    ("'c' ?> 't' ~> 'u'", 1, 12, "'?>' without '!>'"),
    ("wait_for_schedule('not cron')", 1, 19, "invalid cron"),
    ("$$never closed", 1, 1, "unterminated $$"),
    ("'a' 'b'", 1, 5, "unexpected"),
    ("'a' # 'b'", 1, 5, "unexpected character"),
]


@pytest.mark.parametrize(("text", "line", "col", "message"), CASES_WITH_POSITIONS)
def test_errors_name_line_and_column_with_a_caret(text: str, line: int, col: int, message: str) -> None:
    with pytest.raises(FlowError) as err:
        parse(text)
    assert (err.value.line, err.value.col) == (line, col)
    assert message in err.value.message
    rendered = str(err.value)
    assert rendered.splitlines()[-1].strip() == "^"
    assert rendered.startswith(f"<flow>:{line}:{col}:")


def test_nesting_limit_is_a_flow_error() -> None:
    with pytest.raises(FlowError, match="nested more than"):
        parse("(" * 500 + "'a'" + ")" * 500)
    # Chains of & and | nest to the left, so a very wide one is too deep; ~> chains stay flat.
    with pytest.raises(FlowError, match=r"write a wide fan-out as join\(a, b, ...\)"):
        parse(" & ".join(["'a'"] * 300))
    assert len(parse("join(" + ", ".join(["'a'"] * 300) + ")").items) == 300  # type: ignore[attr-defined]
    assert len(parse(" ~> ".join(["'a'"] * 5000)).items) == 5000  # type: ignore[attr-defined]


# -- property tests -------------------------------------------------------------------------

names = st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True)
texts = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=12)
leaves = st.one_of(
    texts.map(A.Sql),
    st.builds(A.Sql, texts, options=st.just((("retries", 2), ("timeout", "5s")))),
    st.floats(min_value=0, max_value=1e6, allow_nan=False).map(lambda f: A.Sleep(round(f, 3))),
    st.builds(A.WaitSignal, names, st.none() | st.integers(0, 1000).map(float)),
    st.builds(A.Break, st.none() | texts),
)


def _trees(children: st.SearchStrategy[A.Node]) -> st.SearchStrategy[A.Node]:
    many = st.lists(children, min_size=2, max_size=4).map(tuple)
    return st.one_of(
        many.map(
            lambda items: A.Seq(tuple(x for i in items for x in (i.items if isinstance(i, A.Seq) else (i,))))
        ),
        many.map(A.Join),
        many.map(A.Race),
        st.builds(A.Bind, children, names),
        st.builds(A.If, children, children, st.none() | children),
        st.builds(A.IfRows, names, children, st.none() | children),
        st.builds(A.Loop, children, st.none() | children),
    )


flows = st.recursive(leaves, _trees, max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(flows)
def test_print_then_parse_gives_the_same_ast(node: A.Node) -> None:
    assert parse(to_text(node)) == node


@settings(max_examples=300, deadline=None)
@given(
    flows, st.integers(0, 10_000), st.sampled_from(["", "(", ")", "'", "~>", "|=>", ",", "@>", "$$", "with"])
)
def test_mutated_text_parses_or_raises_a_positioned_flow_error(node: A.Node, where: int, junk: str) -> None:
    text = to_text(node)
    cut = where % (len(text) + 1)
    mutated = text[:cut] + junk + text[cut + 1 :]
    try:
        parse(mutated)
    except FlowError as err:
        assert err.line >= 1 and err.col >= 1


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_arbitrary_text_never_raises_anything_but_flow_error(text: str) -> None:
    try:
        parse(text)
    except FlowError as err:
        assert err.line >= 1 and err.col >= 1


# Random operator text, as a user would write it (every operator, parentheses, prefix @>,
# options after steps): whatever parses prints to text that parses to the same tree.
_steps = st.sampled_from(["'a'", "'b'", "$$c$$", "sleep(1)", "'d' with (retries=2)", "df.sql('e')"])


def _text_chain(operands: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    link = st.one_of(
        st.tuples(st.sampled_from(["~>", "&", "|", "?>", "!>"]), operands),
        st.tuples(st.just("|=>"), st.sampled_from(["'x'", "'y'"])),
    )
    return st.tuples(operands, st.lists(link, max_size=5)).map(
        lambda parts: " ".join([parts[0]] + [f"{op} {right}" for op, right in parts[1]])
    )


def _text_operands(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    grouped = st.one_of(_steps, inner.map(lambda e: f"({e})"), inner.map(lambda e: f"join({e}, 'z')"))
    return st.one_of(grouped, grouped.map(lambda e: f"@> {e}"))


operator_texts = st.recursive(
    _text_chain(st.one_of(_steps, _steps.map(lambda e: f"@> {e}"))),
    lambda inner: _text_chain(_text_operands(inner)),
    max_leaves=10,
)


@settings(max_examples=400, deadline=None)
@given(operator_texts)
def test_printed_text_of_any_parsed_expression_parses_back_the_same(text: str) -> None:
    try:
        node = parse(text)
    except FlowError as err:
        assert err.line >= 1 and err.col >= 1
        return
    printed = to_text(node)
    assert parse(printed) == node, printed
    assert to_text(parse(printed)) == printed  # canonical: printing is a fixed point
