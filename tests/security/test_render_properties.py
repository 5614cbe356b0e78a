"""Rendering is safe in every lexical position: hostile values in SQL code read back exactly,
in one statement, under either standard_conforming_strings; references inside quotes are
refused with their position; references inside comments never execute."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbt_durable.errors import BindingError
from dbt_durable.runner.results import render, sql_type
from tests.conftest import Space

FRAGMENTS = [
    "'", "''", "\\", "\\'", "$$", "$v$", "$tag$", "*/", "/*", "--", "\n", "\r", '"', ";",
    "'; DROP TABLE canary; --", "\n; DELETE FROM canary; --", "E'", "U&'", "\\0027", "?", "$v",
    "{env:HOME}", "ä", "€", "𝄞", " ",
]  # fmt: skip
HOSTILE = st.lists(
    st.sampled_from(FRAGMENTS)
    | st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")),
    max_size=8,
).map("".join)
# Templates with $v in code position, and what the query must return for value v.
CODE_TEMPLATES = [
    ("SELECT $v AS x", lambda v: v),
    ("SELECT ($v) AS x", lambda v: v),
    ("SELECT $v::text AS x", lambda v: v),
    ("SELECT 'a' || $v AS x", lambda v: "a" + v),
    ("SELECT $v AS x, 'b' AS y", lambda v: v),
    ("SELECT /* $v */ $v AS x -- $v", lambda v: v),
    ("SELECT $v AS x\n-- $v\n", lambda v: v),
    ("SELECT $t$ $$ $t$ || $v AS x", lambda v: " $$ " + v),
    ('SELECT "a$".y FROM (SELECT $v AS y) AS "a$"', lambda v: v),
]
SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
def conn(space: Space) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(space.dsn, autocommit=True) as c:
        c.execute("CREATE TABLE canary (n int)")
        c.execute("INSERT INTO canary VALUES (1)")
        yield c


def _bound(value: Any, type_name: Any = "text") -> dict[str, Any]:
    return {"v": {"rows": [{"x": value}], "row_count": 1, "columns": [["x", type_name]]}}


def _run_once(conn: psycopg.Connection[Any], text: str) -> list[tuple[Any, ...]]:
    """Run ``text`` in a rolled-back transaction; assert one statement ran and the canary is intact."""
    with conn.transaction(force_rollback=True):
        cur = conn.execute(text)
        rows = cur.fetchall()
        assert cur.nextset() is None, f"more than one statement ran: {text!r}"
        assert conn.execute("SELECT count(*) FROM canary").fetchone() == (1,)
    return rows


@pytest.mark.parametrize("scs", ["on", "off"])
@pytest.mark.parametrize("template,expect", CODE_TEMPLATES, ids=[t for t, _ in CODE_TEMPLATES])
def test_hostile_text_in_code_reads_back_exactly_in_one_statement(
    conn: psycopg.Connection[Any], scs: str, template: str, expect: Any
) -> None:
    conn.execute(f"SET standard_conforming_strings = {scs}")

    @SETTINGS
    @given(HOSTILE)
    def check(value: str) -> None:
        for c in (conn, None):  # a known setting, and an unknown one (read both ways)
            rendered = render(template, _bound(value), c)
            rows = _run_once(conn, rendered)
            assert len(rows) == 1 and rows[0][0] == expect(value), rendered

    check()


@pytest.mark.parametrize("scs", ["on", "off"])
def test_hostile_json_and_rowsets_read_back_exactly(conn: psycopg.Connection[Any], scs: str) -> None:
    conn.execute(f"SET standard_conforming_strings = {scs}")

    @SETTINGS
    @given(st.dictionaries(HOSTILE, HOSTILE, max_size=3), st.lists(HOSTILE, min_size=1, max_size=3), HOSTILE)
    def check(doc: dict[str, str], values: list[str], column: str) -> None:
        rows = _run_once(conn, render("SELECT $v AS x", _bound(doc, "jsonb"), conn))
        assert rows == [(doc,)]
        if not column or len(column.encode()) > 63:
            column = "c"
        result = {"rows": [{column: v} for v in values], "columns": [[column, "text"]]}
        rows = _run_once(conn, render("SELECT * FROM $r.* -- $r", {"r": result}, conn))
        assert rows == [(v,) for v in values]

    check()


@pytest.mark.parametrize("scs", ["on", "off"])
def test_forged_type_names_never_reach_the_sql(conn: psycopg.Connection[Any], scs: str) -> None:
    conn.execute(f"SET standard_conforming_strings = {scs}")

    @SETTINGS
    @given(HOSTILE | st.sampled_from(["int); DROP TABLE canary; --", "text[]; SELECT 1", "int4 --"]), HOSTILE)
    def check(type_name: str, value: str) -> None:
        for template in ("SELECT $v AS x", "SELECT * FROM $v.*"):
            rendered = render(template, _bound(value, type_name), conn)
            if sql_type(type_name) is None:
                assert _run_once(conn, rendered) == [(value,)]
            else:  # a well-formed name may still not exist, or not fit the value: an error, never SQL
                try:
                    _run_once(conn, rendered)
                except psycopg.Error:
                    conn.rollback()
                assert conn.execute("SELECT count(*) FROM canary").fetchone() == (1,)

    check()


def test_negative_integers_and_catalogue_types_render_as_values(conn: psycopg.Connection[Any]) -> None:
    assert _run_once(conn, render("SELECT 1-$v AS x", _bound(-5, "integer"), conn)) == [(6,)]
    stamp = {"rows": [{"t": "2026-11-24 10:00:00+00"}], "columns": [["t", "timestamp with time zone"]]}
    rows = _run_once(conn, render("SELECT $s::text AS x, $s.t = now() AS y", {"s": stamp}, conn))
    assert rows[0][0].startswith("2026-11-24")
    varchar = {"rows": [{"c": "ab"}], "columns": [["c", "character varying(10)"]]}
    assert _run_once(conn, render("SELECT pg_typeof(c)::text FROM $s.*", {"s": varchar}, conn)) == [
        ("character varying",)
    ]


@pytest.mark.parametrize(
    "template,where,position",
    [
        ("SELECT '$v'", "string literal", "1:9"),
        ("SELECT 'it''s $v'", "string literal", "1:15"),
        ("SELECT E'\\' $v'", "string literal", "1:13"),
        ("SELECT e'$v.col'", "string literal", "1:10"),
        ("SELECT U&'$v'", "string literal", "1:11"),
        ("SELECT N'$v', B'$v'", "string literal", "1:10"),
        ('SELECT 1 AS "$v"', "quoted identifier", "1:14"),
        ('SELECT 1 AS U&"x$v"', "quoted identifier", "1:17"),
        ("SELECT $$ $v? $$", "dollar quote", "1:11"),
        ("SELECT $tag$ $$ $v $tag$", "dollar quote", "1:17"),
        ("DO $body$\nBEGIN\n  PERFORM $v;\nEND $body$", "dollar quote", "3:11"),
        ("SELECT 1,\n  'unterminated $v", "string literal", "2:17"),
    ],
)
def test_references_inside_quotes_are_refused_with_their_position(
    template: str, where: str, position: str
) -> None:
    with pytest.raises(BindingError) as info:
        render(template, _bound("x"), None)
    message = str(info.value)
    assert f"at {position}" in message and f"inside a {where}" in message and "$v" in message


def test_references_in_comments_never_execute(conn: psycopg.Connection[Any]) -> None:
    evil = "x\nDELETE FROM canary; --"
    for template in (
        "SELECT 1 AS x -- $v",
        "SELECT 1 AS x -- $v\r",
        "SELECT /* outer /* $v */ still a comment $v */ 1 AS x",
        "SELECT 1 AS x /* $nope.* unbound refs in comments are fine */",
    ):
        rendered = render(template, _bound(evil), conn)
        assert rendered == template
        assert _run_once(conn, rendered) == [(1,)]


def test_dollar_tags_parameters_and_identifiers_are_not_references(conn: psycopg.Connection[Any]) -> None:
    # $v$ opens a dollar quote (a tag never starts with a digit; $1 is a parameter); x$v is an
    # identifier, as PostgreSQL reads them.
    assert render("SELECT $v$ it's $v$ AS x", _bound("no"), conn) == "SELECT $v$ it's $v$ AS x"
    assert _run_once(conn, "SELECT $v$ it's $v$ AS x") == [(" it's ",)]
    assert render("SELECT x$v, $1", _bound("no"), conn) == "SELECT x$v, $1"


def test_adjacent_quotes_stay_apart(conn: psycopg.Connection[Any]) -> None:
    rendered = render("SELECT $v'b'", _bound("a"), conn)
    assert rendered == "SELECT 'a' 'b'"  # two tokens (a syntax error), never the literal 'a''b'
    assert render("SELECT U&$v", _bound("a"), conn) == "SELECT U& 'a'"


def test_a_backslash_that_reads_differently_per_setting_is_refused_when_the_setting_is_unknown(
    conn: psycopg.Connection[Any],
) -> None:
    template = "SELECT 'a\\' || $v || '' AS x"
    with pytest.raises(BindingError, match="standard_conforming_strings"):
        render(template, _bound("x"), None)
    conn.execute("SET standard_conforming_strings = on")
    assert _run_once(conn, render(template, _bound("x"), conn)) == [("a\\x",)]
    conn.execute("SET standard_conforming_strings = off")
    with pytest.raises(BindingError, match="inside a string literal"):
        render(template, _bound("x"), conn)


def test_named_result_forms_keep_working(conn: psycopg.Connection[Any]) -> None:
    r = {"rows": [{"id": 7, "name": "a'b"}], "columns": [["id", "integer"], ["name", "text"]]}
    empty = {"rows": [], "columns": [["id", "integer"]]}
    bindings = {"r": r, "e": empty}
    text = "SELECT $r AS a, $r.name AS b, $e? AS c, $nope.x? AS d, (SELECT count(*) FROM $e.*) AS n"
    assert _run_once(conn, render(text, bindings, conn)) == [(7, "a'b", None, None, 0)]
    with pytest.raises(BindingError, match="no rows"):
        render("SELECT $e", bindings, conn)
