"""$name rendering: arbitrary values read back by Postgres as the very same value, never injected."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from decimal import Decimal

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import pq

from dbt_durable.errors import BindingError
from dbt_durable.runner.results import build_result, render
from dbt_durable.runner.steps import TypeNames

TEXT = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=40)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | TEXT.filter(lambda t: "\x00" not in t),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(TEXT.filter(lambda t: "\x00" not in t), kids, max_size=4)
    ),
    max_leaves=10,
)


@pytest.fixture(scope="module")
def conn(pg_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        yield c


def _result(conn: psycopg.Connection, select: str, params: tuple[object, ...]) -> dict[str, object]:
    cur = conn.cursor()
    cur.execute(select, params)
    res = cur.pgresult
    assert res is not None and res.status == pq.ExecStatus.TUPLES_OK
    types = TypeNames()
    oids = [res.ftype(i) for i in range(res.nfields)]
    types.names.update(
        dict(
            conn.execute(
                "SELECT oid::int, format_type(oid, NULL) FROM pg_type WHERE oid = ANY(%s)", (oids,)
            ).fetchall()
        )
    )
    return build_result(res, types.names, 10_000, 10**8)


def _roundtrip(conn: psycopg.Connection, select: str, params: tuple[object, ...]) -> tuple[object, object]:
    """The value as Postgres returns it directly, and as it returns the rendered $v."""
    bound = _result(conn, select, params)
    rendered = render("SELECT $v AS v", {"v": bound}, conn)
    again = conn.execute(rendered).fetchone()
    direct = conn.execute(select, params).fetchone()
    assert again is not None and direct is not None
    return direct[0], again[0]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(TEXT)
def test_text_reads_back_identically_or_fails_clearly_on_nul(conn: psycopg.Connection, text: str) -> None:
    if "\x00" in text:
        with pytest.raises(BindingError, match="NUL"):
            render("SELECT $v", {"v": {"rows": [{"v": text}], "columns": [["v", "text"]]}}, conn)
        return
    direct, again = _roundtrip(conn, "SELECT %s::text AS v", (text,))
    assert again == direct == text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        st.integers(-(10**30), 10**30),
        st.decimals(allow_nan=False, allow_infinity=False, places=6),
        st.just(Decimal("NaN")),
    )
)
def test_numbers_including_huge_and_nan_read_back_identically(
    conn: psycopg.Connection, number: object
) -> None:
    direct, again = _roundtrip(conn, "SELECT %s::numeric AS v", (number,))
    if isinstance(direct, Decimal) and direct.is_nan():
        assert isinstance(again, Decimal) and again.is_nan()
    else:
        assert again == direct


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_floats_read_back_identically(conn: psycopg.Connection, value: float) -> None:
    if not math.isfinite(value):  # pg_durable's encoding: JSON has no NaN or Infinity, so null
        assert _result(conn, "SELECT %s::float8 AS v", (value,))["rows"] == [{"v": None}]
        return
    direct, again = _roundtrip(conn, "SELECT %s::float8 AS v", (value,))
    assert again == direct


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(JSONISH.filter(lambda d: d is not None))
def test_nested_json_reads_back_identically(conn: psycopg.Connection, doc: object) -> None:
    # A top-level JSON null is stored like SQL NULL (documented): $v? reads it as NULL.
    direct, again = _roundtrip(conn, "SELECT %s::jsonb AS v", (json.dumps(doc),))
    assert again == direct


def test_bytea_fails_as_in_pg_durable(conn: psycopg.Connection) -> None:
    from dbt_durable.runner.results import UnsupportedResultType

    with pytest.raises(UnsupportedResultType, match="bytea"):
        _result(conn, "SELECT '\\x00ff'::bytea AS v", ())
    assert _result(conn, "SELECT encode('\\x00ff'::bytea, 'base64') AS v", ())["rows"] == [{"v": "AP8="}]


def test_timestamps_are_rfc3339(conn: psycopg.Connection) -> None:
    rows = _result(
        conn,
        "SELECT '2026-11-24 10:00:00.5+05:30'::timestamptz AS tz, '2026-11-24 10:00:00'::timestamp AS ts, "
        "'infinity'::timestamptz AS inf, 'NaN'::float8 AS nan, 1.50::numeric AS n",
        (),
    )["rows"]
    assert rows == [
        {
            "tz": "2026-11-24T04:30:00.500+00:00",
            "ts": "2026-11-24T10:00:00",
            "inf": "infinity",
            "nan": None,
            "n": "1.50",
        }
    ]


@pytest.mark.parametrize(
    "select",
    [
        "SELECT '2026-11-24 10:00:00.123456+05:30'::timestamptz AS v",
        "SELECT '2026-02-30'::text AS v",
        "SELECT ARRAY['a''b', 'c\\\\d', NULL] AS v",
        "SELECT '1 day 02:00'::interval AS v",
        "SELECT 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS v",
        "SELECT 'a\"b'::varchar(10) AS v",
        "SELECT true AS v",
        "SELECT '(1,2)'::point::text AS v",
    ],
)
def test_other_types_read_back_identically(conn: psycopg.Connection, select: str) -> None:
    direct, again = _roundtrip(conn, select, ())
    assert again == direct
