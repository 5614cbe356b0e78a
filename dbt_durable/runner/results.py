"""Step results: building them from a query result, and rendering ``$name`` references.

A SQL step's result is ``{"rows": [...], "row_count": n, "columns": [[name, type], ...]}``.
Values keep Postgres's own text form unless JSON holds them exactly (integers, booleans,
json/jsonb), so a rendered literal ``'<text>'::<type>`` reads back as the very same value.
References always render as quoted SQL literals, never as raw text.
"""

from __future__ import annotations

import json
import math
from typing import Any

from psycopg import pq, sql

from dbt_durable.errors import BindingError, ResultTooLarge
from dbt_durable.flow.refs import REF

INT_TYPES = {"smallint", "integer", "bigint", "int2", "int4", "int8", "oid"}
FLOAT_TYPES = {"real", "double precision", "float4", "float8"}
JSON_TYPES = {"json", "jsonb"}
TEXT_TYPES = {"text", "character varying", "varchar", "name", "unknown", "bpchar", "character"}


def _from_text(text: str, type_name: str) -> Any:
    if type_name in INT_TYPES:
        return int(text)
    if type_name == "boolean" or type_name == "bool":
        return text == "t"
    if type_name in JSON_TYPES:
        return json.loads(text)
    if type_name in FLOAT_TYPES or type_name == "numeric":
        try:
            number = float(text)
        except ValueError:
            return text
        if math.isfinite(number) and repr(number) == text:
            return number
    return text


def build_result(
    res: pq.abc.PGresult | None, type_names: dict[int, str], max_rows: int, max_bytes: int
) -> dict[str, Any]:
    """The JSON result of a finished statement. Raises :class:`ResultTooLarge` over a cap."""
    if res is None or res.status != pq.ExecStatus.TUPLES_OK:
        affected = res.command_tuples if res is not None else None
        return {"rows": [], "row_count": affected or 0, "columns": []}
    ntuples, nfields = res.ntuples, res.nfields
    if ntuples > max_rows:
        raise ResultTooLarge(
            f"result has {ntuples} rows, over the cap of {max_rows} (max_result_rows); "
            "write large results to a table instead of binding them"
        )
    names = [(res.fname(i) or b"?column?").decode() for i in range(nfields)]
    types = [type_names.get(res.ftype(i), "text") for i in range(nfields)]
    rows: list[dict[str, Any]] = []
    size = 0
    for r in range(ntuples):
        row: dict[str, Any] = {}
        for c in range(nfields):
            raw = res.get_value(r, c)
            if raw is None:
                row[names[c]] = None
                continue
            size += len(raw)
            row[names[c]] = _from_text(raw.decode(), types[c])
        rows.append(row)
        if size > max_bytes:
            raise ResultTooLarge(
                f"result is over the cap of {max_bytes} bytes (max_result_bytes); "
                "write large results to a table instead of binding them"
            )
    return {"rows": rows, "row_count": ntuples, "columns": [[n, t] for n, t in zip(names, types)]}


def truthy(result: Any) -> bool:
    """pg_durable truthiness: the first column of the first row; no rows is false."""
    value = result
    if isinstance(result, dict) and "rows" in result:
        rows = result["rows"]
        if not rows:
            return False
        first = rows[0]
        value = next(iter(first.values()), None) if first else None
    return _truthy_value(value)


def _truthy_value(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "false", "f", "no", "n", "off", "0"):
            return False
        try:
            return float(text) != 0
        except ValueError:
            return True
    return bool(value)


def literal(value: Any, type_name: str, conn: Any) -> str:
    """``value`` as a SQL literal that Postgres reads back as the same ``type_name`` value."""
    if value is None:
        return "NULL" if type_name in TEXT_TYPES else f"(NULL::{type_name})"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and type_name in INT_TYPES:
        return str(value)
    if type_name in JSON_TYPES or isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False)
        return f"({_quote(text, conn)}::{'json' if type_name == 'json' else 'jsonb'})"
    text = value if isinstance(value, str) else (repr(value) if isinstance(value, float) else str(value))
    quoted = _quote(text, conn)
    # Parenthesized, so a following subscript or operator applies to the value, not the type.
    return quoted if type_name in TEXT_TYPES else f"({quoted}::{type_name})"


def _quote(text: str, conn: Any) -> str:
    if "\x00" in text:
        raise BindingError("a value contains a NUL character, which Postgres text cannot hold")
    return sql.Literal(text).as_string(conn)


def _columns(result: dict[str, Any]) -> list[list[str]]:
    cols: list[list[str]] = result.get("columns") or [
        [k, "text"] for k in (result["rows"][0] if result["rows"] else {})
    ]
    return cols


def _value_of(name: str, result: Any) -> tuple[Any, str] | None:
    """(value, type) of ``$name``: first column of first row; None if there are no rows."""
    if isinstance(result, dict) and "rows" in result:
        if not result["rows"]:
            return None
        cols = _columns(result)
        if not cols:
            raise BindingError(f"${name} has no columns")
        col, typ = cols[0]
        return result["rows"][0].get(col), typ
    if isinstance(result, (dict, list)):
        return result, "jsonb"
    if isinstance(result, bool):
        return result, "boolean"
    if isinstance(result, int):
        return result, "bigint"
    return result, "text"


def _column_of(name: str, col: str, result: Any) -> tuple[Any, str] | None:
    if isinstance(result, dict) and "rows" in result:
        if not result["rows"]:
            return None
        types: dict[str, str] = {c: t for c, t in _columns(result)}
        if col not in types:
            known = ", ".join(types) or "none"
            raise BindingError(f"${name} has no column {col!r} (columns: {known})")
        return result["rows"][0].get(col), types[col]
    if isinstance(result, dict):
        if col not in result:
            raise BindingError(f"${name} has no field {col!r}")
        value = result[col]
        kind = (
            "boolean"
            if isinstance(value, bool)
            else "bigint"
            if isinstance(value, int)
            else ("jsonb" if isinstance(value, (dict, list)) else "text")
        )
        return value, kind
    raise BindingError(f"${name}.{col}: ${name} is not a row result")


def _rowset(name: str, result: Any, conn: Any, max_rows: int) -> str:
    if not (isinstance(result, dict) and "rows" in result):
        raise BindingError(f"${name}.* needs a row result (a SQL step), got {type(result).__name__}")
    cols = _columns(result)
    if not cols:
        raise BindingError(f"${name}.* has no columns to expand")
    rows = result["rows"]
    if len(rows) > max_rows:
        raise BindingError(f"${name}.* has {len(rows)} rows, over the cap of {max_rows}")
    alias = sql.Identifier(name).as_string(conn)
    names = ", ".join(sql.Identifier(c).as_string(conn) for c, _ in cols)
    if not rows:
        nulls = ", ".join(f"NULL::{t}" for _, t in cols)
        return f"(SELECT {nulls} LIMIT 0) AS {alias}({names})"
    body = ", ".join("(" + ", ".join(_typed(row.get(c), t, conn) for c, t in cols) + ")" for row in rows)
    return f"(VALUES {body}) AS {alias}({names})"


def _typed(value: Any, type_name: str, conn: Any) -> str:
    # In VALUES every literal carries its type, so the column types match the source's.
    text = literal(value, type_name, conn)
    if type_name in TEXT_TYPES:
        return f"{text}::{type_name if type_name != 'unknown' else 'text'}"
    return text


def _resolve(m: Any, bindings: dict[str, Any]) -> tuple[Any, str] | None:
    """(value, type) of a ``$name`` / ``$name.col`` match; None for a null-safe miss.

    Raises :class:`BindingError` for an unbound name, no rows, a NULL or a missing column,
    unless the reference ends in ``?``.
    """
    name, col, safe = m["name"], m["col"], m["safe"] is not None
    if name not in bindings:
        if safe:
            return None
        raise BindingError(f"${name} is not bound yet")
    result = bindings[name]
    found = _column_of(name, col, result) if col else _value_of(name, result)
    ref = f"${name}.{col}" if col else f"${name}"
    if found is None:
        if safe:
            return None
        raise BindingError(f"{ref} has no rows (use {ref}? to read NULL instead)")
    if found[0] is None:
        if safe:
            return None
        raise BindingError(f"{ref} is NULL (use {ref}? to read NULL instead)")
    return found


def render(text: str, bindings: dict[str, Any], conn: Any, max_rowset: int = 10_000) -> str:
    """``text`` with every ``$name`` reference replaced by a quoted, typed SQL literal.

    ``$name.*`` becomes ``(VALUES ...) AS name(cols)``. Errors as in :func:`_resolve`.
    """

    def replace(m: Any) -> str:
        if m["col"] == "*" and m["name"] in bindings:
            return _rowset(m["name"], bindings[m["name"]], conn, max_rowset)
        found = _resolve(m, bindings)
        return "NULL" if found is None else literal(found[0], found[1], conn)

    return REF.sub(replace, text)


def render_raw(text: str, bindings: dict[str, Any]) -> str:
    """``text`` with references as plain values (for HTTP URLs, bodies and headers).

    Strings are inserted as they are, other values as JSON, and ``$name.*`` as a JSON array of
    row objects. The same strict/null-safe rules as :func:`render` apply.
    """

    def replace(m: Any) -> str:
        if m["col"] == "*" and m["name"] in bindings:
            result = bindings[m["name"]]
            return json.dumps(result.get("rows") if isinstance(result, dict) else result, ensure_ascii=False)
        found = _resolve(m, bindings)
        if found is None:
            return "null"
        return found[0] if isinstance(found[0], str) else json.dumps(found[0], ensure_ascii=False)

    return REF.sub(replace, text)
