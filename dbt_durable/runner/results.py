"""Step results: building them from a query result, and rendering ``$name`` references.

A SQL step's result is ``{"rows": [...], "row_count": n, "columns": [[name, type], ...]}``.
Values are encoded as pg_durable encodes them: integers, booleans and json/jsonb as JSON,
floats as JSON numbers (NaN and ±Infinity as null, since JSON has none), numeric as a string
(exact), timestamps as RFC 3339 strings (``timestamptz`` in UTC, ``2026-11-24T10:00:00+00:00``;
``timestamp`` without an offset), and a ``bytea`` column fails the step (encode it first). Every
other type keeps Postgres's own text form (pg_durable fails on those; see
docs/pg_durable-compatibility.md). So a rendered literal ``'<text>'::<type>`` reads back as the
very same value (non-finite floats excepted: they read as NULL).

Guarantees of :func:`render` (SQL steps), per lexical position of a reference (read by
:func:`dbt_durable.flow.refs.find_sql_refs`, as PostgreSQL's lexer reads the step):

- **SQL code**: replaced by a quoted, typed literal. A value can never end the literal: text
  is quoted as ``'...'`` (quotes doubled) or, if it has a backslash, as ``E'...'`` (quotes
  and backslashes doubled); both read the same whatever ``standard_conforming_strings`` is,
  so no connection is needed to quote. A space is put between the literal and a directly
  adjacent quote, letter or ``&`` (so it cannot merge into ``U&'...'``, ``'a''b'`` or an
  identifier), and a negative integer is parenthesized (``1-$v`` must not become the
  comment ``1--5``).
- **Comment** (``--`` or ``/* */``): left untouched. A comment never executes, and an
  unrendered reference there cannot fail the step.
- **String literal, quoted identifier, dollar quote**: refused with a :class:`BindingError`
  naming the reference and its ``line:col`` in the step text. Inside quotes no rendering is
  both safe and faithful (a value could close the quote); build the text in SQL instead
  (``'prefix ' || $name``).
- When the session's ``standard_conforming_strings`` is unknown (no connection), the step is
  read both ways; if a backslash in a ``'...'`` string makes the two readings disagree about
  where a reference is, it is refused.

Type names in casts come only from the catalogue's grammar: :func:`sql_type` accepts the
names ``format_type`` produces (SQL keyword types such as ``timestamp with time zone`` or
``character varying(10)``, and identifiers, optionally schema-qualified, with ``(n[,m])``
modifiers and ``[]`` suffixes) and renders identifiers re-quoted. A result's ``columns``
can be forged (a ``break()`` value built from a signal payload or an HTTP body); a type name
outside that grammar is never pasted: the value renders as an untyped text literal instead.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from psycopg import pq

from dbt_durable.errors import BindingError, ResultTooLarge
from dbt_durable.flow.refs import CODE, COMMENT, REF, Ref, find_sql_refs, line_col

INT_TYPES = {"smallint", "integer", "bigint", "int2", "int4", "int8", "oid"}
FLOAT_TYPES = {"real", "double precision", "float4", "float8"}
JSON_TYPES = {"json", "jsonb"}
TEXT_TYPES = {"text", "character varying", "varchar", "name", "unknown", "bpchar", "character"}


class UnsupportedResultType(BindingError):
    """A result column of a type that a step result cannot hold (bytea, as in pg_durable)."""


# Postgres's ISO output (DateStyle ISO, the default): 2026-11-24 10:00:00.123456+05:30
_ISO_STAMP = re.compile(
    r"(?P<date>\d{4,}-\d\d-\d\d) (?P<time>\d\d:\d\d:\d\d)(?:\.(?P<frac>\d{1,6}))?"
    r"(?:(?P<sign>[+-])(?P<oh>\d\d)(?::(?P<om>\d\d))?(?::(?P<os>\d\d))?)?"
)


def _fraction(frac: str | None) -> str:
    # chrono's RFC 3339 form (pg_durable's): no fraction, or 3, 6 digits as needed
    if not frac or int(frac) == 0:
        return ""
    micro = frac.ljust(6, "0")
    return "." + (micro[:3] if micro.endswith("000") else micro)


def _rfc3339(text: str, with_zone: bool) -> str:
    """A timestamp's ISO text as RFC 3339 (UTC for timestamptz); other forms as they are."""
    m = _ISO_STAMP.fullmatch(text)
    if m is None:  # infinity, BC dates, another DateStyle: Postgres's own text
        return text
    if not with_zone:
        return f"{m['date']}T{m['time']}{_fraction(m['frac'])}"
    from datetime import datetime, timedelta

    try:
        local = datetime.fromisoformat(f"{m['date']} {m['time']}")
    except ValueError:
        return text
    sign = -1 if m["sign"] == "-" else 1
    offset = timedelta(hours=int(m["oh"] or 0), minutes=int(m["om"] or 0), seconds=int(m["os"] or 0))
    try:
        utc = local - sign * offset
    except OverflowError:
        return text
    return f"{utc.isoformat(timespec='seconds')}{_fraction(m['frac'])}+00:00"


def _from_text(text: str, type_name: str) -> Any:
    if type_name in INT_TYPES:
        return int(text)
    if type_name == "boolean" or type_name == "bool":
        return text == "t"
    if type_name in JSON_TYPES:
        return json.loads(text)
    if type_name in FLOAT_TYPES:
        try:
            number = float(text)
        except ValueError:
            return text
        if not math.isfinite(number):
            return None  # pg_durable: JSON has no NaN or Infinity
        if repr(number) == text:
            return number
        return text
    if type_name == "timestamp with time zone":
        return _rfc3339(text, True)
    if type_name == "timestamp without time zone":
        return _rfc3339(text, False)
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
    if "bytea" in types and ntuples:
        column = names[types.index("bytea")]
        raise UnsupportedResultType(
            f"column {column!r} is of type bytea, which a step result cannot hold (as in pg_durable); "
            f"select encode({column}, 'base64') or {column}::text instead"
        )
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
    """pg_durable truthiness: the first column of the first row; no rows is false. Any other
    result (an object, an array, a string) is judged as a whole by the same rules."""
    value = result
    if isinstance(result, dict) and isinstance(result.get("rows"), list):
        rows = result["rows"]
        if not rows:
            return False
        first = rows[0]
        if isinstance(first, dict) and first:
            value = next(iter(first.values()))
    return _truthy_value(value)


def _truthy_value(value: Any) -> bool:
    """pg_durable's rules: false, 0, NULL, '', 'false'/'f'/'no' (any case, trimmed), a string
    that reads as the number 0, [] and {} are false; everything else ('off', 'n' included)
    is true."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "false", "f", "no"):
            return False
        if text in ("true", "t", "yes"):
            return True
        try:
            return float(text) != 0
        except ValueError:
            return True
    return bool(value)


# -- type names -------------------------------------------------------------------------
_IDENT_PART = r'(?:[a-z_][a-z0-9_$]*|"(?:[^"\x00]|"")+")'
_PRECISION = r"(?:\([0-9]+\))"
_KEYWORD_TYPE = (
    r"double precision"
    r"|(?:timestamp|time)" + _PRECISION + r"?(?: with(?:out)? time zone)?"
    r"|interval(?: (?:year|month|day|hour|minute|second)(?: to (?:month|hour|minute|second))?)?"
    + _PRECISION
    + r"?"
    r"|(?:national character|character|char|nchar|bit)(?: varying)?" + _PRECISION + r"?"
    r"|(?:varchar|numeric|decimal|dec|float)(?:\([0-9]+(?:, ?-?[0-9]+)?\))?"
    r"|int|integer|smallint|bigint|real|boolean|json"
)
_TYPE = re.compile(
    r"(?:(?P<keyword>" + _KEYWORD_TYPE + r")"
    r"|(?P<schema>" + _IDENT_PART + r")\.(?P<qname>" + _IDENT_PART + r")(?P<qmod>\([0-9]+(?:, ?[0-9]+)*\))?"
    r"|(?P<name>" + _IDENT_PART + r")(?P<mod>\([0-9]+(?:, ?[0-9]+)*\))?)"
    r"(?P<array>(?:\[[0-9]*\])*)"
)


def _quote_part(part: str) -> str:
    # Already-quoted parts passed the grammar (no lone quote inside); plain ones get quoted so
    # that no keyword, however it is spelled, is ever read as anything but a type name.
    return part if part.startswith('"') else f'"{part}"'


def sql_type(type_name: Any) -> str | None:
    """``type_name`` as SQL, if it is a catalogue type name (see the module doc); else None."""
    if not isinstance(type_name, str) or len(type_name) > 200:
        return None
    m = _TYPE.fullmatch(type_name)
    if m is None:
        return None
    if m["keyword"] is not None:
        return m["keyword"] + m["array"]
    if m["schema"] is not None:
        return f"{_quote_part(m['schema'])}.{_quote_part(m['qname'])}{m['qmod'] or ''}{m['array']}"
    return f"{_quote_part(m['name'])}{m['mod'] or ''}{m['array']}"


# -- literals ---------------------------------------------------------------------------
def quote_text(text: str) -> str:
    """``text`` as a SQL string literal that reads the same whatever
    ``standard_conforming_strings`` is. Raises :class:`BindingError` for a NUL character."""
    if "\x00" in text:
        raise BindingError("a value contains a NUL character, which Postgres text cannot hold")
    body = text.replace("'", "''")
    if "\\" in body:
        return "E'" + body.replace("\\", "\\\\") + "'"
    return "'" + body + "'"


def quote_ident(name: Any) -> str:
    """``name`` as a quoted SQL identifier."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise BindingError(f"{name!r} cannot be a column name")
    return '"' + name.replace('"', '""') + '"'


def literal(value: Any, type_name: Any, conn: Any = None) -> str:
    """``value`` as a SQL literal that Postgres reads back as the same ``type_name`` value.

    ``type_name`` is cast to only if :func:`sql_type` accepts it; ``conn`` is not needed
    (kept for callers) since the quoting does not depend on the session.
    """
    cast = sql_type(type_name)
    plain = cast is None or type_name in TEXT_TYPES
    if value is None:
        return "NULL" if plain else f"(NULL::{cast})"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and type_name in INT_TYPES:
        return str(value) if value >= 0 else f"({value})"
    if type_name in JSON_TYPES or isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False)
        return f"({quote_text(text)}::{'json' if type_name == 'json' else 'jsonb'})"
    text = value if isinstance(value, str) else (repr(value) if isinstance(value, float) else str(value))
    quoted = quote_text(text)
    # Parenthesized, so a following subscript or operator applies to the value, not the type.
    return quoted if plain else f"({quoted}::{cast})"


def _columns(name: str, result: dict[str, Any]) -> list[tuple[str, Any]]:
    rows = result.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise BindingError(f"${name} is not a well-formed row result (rows must be objects)")
    cols = result.get("columns")
    if not cols:
        return [(k, "text") for k in (rows[0] if rows else {})]
    if not isinstance(cols, list) or not all(
        isinstance(c, list) and len(c) == 2 and isinstance(c[0], str) for c in cols
    ):
        raise BindingError(f"${name} is not a well-formed row result (columns must be [name, type] pairs)")
    return [(c, t) for c, t in cols]


def _value_of(name: str, result: Any) -> tuple[Any, Any] | None:
    """(value, type) of ``$name``: first column of first row; None if there are no rows."""
    if isinstance(result, dict) and "rows" in result:
        cols = _columns(name, result)
        if not result["rows"]:
            return None
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


def _column_of(name: str, col: str, result: Any) -> tuple[Any, Any] | None:
    if isinstance(result, dict) and "rows" in result:
        types: dict[str, Any] = dict(_columns(name, result))
        if not result["rows"]:
            return None
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


def _rowset(name: str, result: Any, max_rows: int) -> str:
    if not (isinstance(result, dict) and "rows" in result):
        raise BindingError(f"${name}.* needs a row result (a SQL step), got {type(result).__name__}")
    cols = _columns(name, result)
    if not cols:
        raise BindingError(f"${name}.* has no columns to expand")
    rows = result["rows"]
    if len(rows) > max_rows:
        raise BindingError(f"${name}.* has {len(rows)} rows, over the cap of {max_rows}")
    alias = quote_ident(name)
    names = ", ".join(quote_ident(c) for c, _ in cols)
    if not rows:
        nulls = ", ".join(f"NULL::{sql_type(t) or 'text'}" for _, t in cols)
        return f"(SELECT {nulls} LIMIT 0) AS {alias}({names})"
    body = ", ".join("(" + ", ".join(_typed(row.get(c), t) for c, t in cols) + ")" for row in rows)
    return f"(VALUES {body}) AS {alias}({names})"


def _typed(value: Any, type_name: Any) -> str:
    # In VALUES every literal carries its type, so the column types match the source's.
    text = literal(value, type_name)
    if sql_type(type_name) is None:
        return f"{text}::text"
    if type_name in TEXT_TYPES:
        return f"{text}::{type_name if type_name != 'unknown' else 'text'}"
    return text


def _resolve(m: Any, bindings: dict[str, Any]) -> tuple[Any, Any] | None:
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


# -- rendering --------------------------------------------------------------------------
_WHERE = {
    "string": "inside a string literal",
    "identifier": "inside a quoted identifier",
    "dollar": "inside a dollar quote",
}
_HOW = {
    "string": "move it out of the quotes, e.g. 'prefix ' || {ref} || ' suffix'",
    "identifier": "a value cannot be spliced into an identifier; move it out of the double quotes",
    "dollar": (
        "move it out of the dollar quote (build the text with || or format(), or hand the value "
        "to the block with set_config() and read it with current_setting())"
    ),
}


def _standard_strings(conn: Any) -> bool | None:
    """The session's ``standard_conforming_strings`` (True for on), or None if unknown."""
    status = getattr(getattr(conn, "info", None), "parameter_status", None)
    if not callable(status):
        return None
    try:
        value = status("standard_conforming_strings")
    except Exception:  # an unexpected connection type: treat the setting as unknown
        return None
    return {"on": True, "off": False}.get(value) if isinstance(value, str) else None


def sql_refs(text: str, standard_strings: bool | None) -> list[Ref]:
    """The references of the SQL ``text`` with their positions; reads both ways if the
    setting is unknown and refuses a text whose two readings disagree."""
    if standard_strings is not None:
        return find_sql_refs(text, backslash_escapes=not standard_strings)
    on, off = find_sql_refs(text, False), find_sql_refs(text, True)
    if on != off:
        bad = min(
            [r for r in on if r not in off] + [r for r in off if r not in on] or on, key=lambda r: r.start
        )
        raise BindingError(
            f"{text[bad.start : bad.end]} at {line_col(text, bad.start)}: a backslash in a '...' string "
            "makes it read differently with standard_conforming_strings on and off; write E'...' "
            "for escapes or double the quotes"
        )
    return on


def render(
    text: str,
    bindings: dict[str, Any],
    conn: Any,
    max_rowset: int = 10_000,
    known: frozenset[str] | None = None,
) -> str:
    """``text`` with every ``$name`` reference in SQL code replaced by a quoted, typed literal.

    ``$name.*`` becomes ``(VALUES ...) AS name(cols)``. References in comments are left as
    they are; in quotes they are refused (see the module doc). ``conn`` tells the session's
    ``standard_conforming_strings``. Errors as in :func:`_resolve`. With ``known`` (the names
    the flow binds), a reference to any other name is left as written, wherever it is
    (pg_durable's rule: ``$1`` of a function body, ``$x`` of a regular expression).
    """
    out: list[str] = []
    pos = 0
    for ref in sql_refs(text, _standard_strings(conn)):
        if ref.context == COMMENT:
            continue
        if known is not None and ref.name not in known and ref.name not in bindings:
            continue
        token = text[ref.start : ref.end]
        if ref.context != CODE:
            raise BindingError(
                f"{token} at {line_col(text, ref.start)} is {_WHERE[ref.context]}, where it is not "
                f"rendered: {_HOW[ref.context].format(ref=token)}"
            )
        m = REF.fullmatch(token)
        assert m is not None
        if ref.column == "*" and ref.name in bindings:
            value = _rowset(ref.name, bindings[ref.name], max_rowset)
        else:
            found = _resolve(m, bindings)
            value = "NULL" if found is None else literal(found[0], found[1])
        before = text[ref.start - 1] if ref.start > 0 else " "
        after = text[ref.end] if ref.end < len(text) else " "
        # Keep the literal a token of its own (see the module doc).
        if before in "'\"&" or before.isalnum() or before == "_":
            value = " " + value
        if after in "'\"" or after.isalnum() or after == "_":
            value += " "
        out += [text[pos : ref.start], value]
        pos = ref.end
    out.append(text[pos:])
    return "".join(out)


def render_raw(text: str, bindings: dict[str, Any], known: frozenset[str] | None = None) -> str:
    """``text`` with references as plain values (for HTTP URLs, bodies and headers).

    No SQL lexing: strings are inserted as they are, other values as JSON, and ``$name.*`` as
    a JSON array of row objects. The same strict/null-safe rules as :func:`render` apply.
    Inserted values are never scanned again (for references or for ``{env:NAME}``).
    """

    def replace(m: Any) -> str:
        if known is not None and m["name"] not in known and m["name"] not in bindings:
            return str(m.group())
        if m["col"] == "*" and m["name"] in bindings:
            result = bindings[m["name"]]
            return json.dumps(result.get("rows") if isinstance(result, dict) else result, ensure_ascii=False)
        found = _resolve(m, bindings)
        if found is None:
            return "null"
        return found[0] if isinstance(found[0], str) else json.dumps(found[0], ensure_ascii=False)

    return REF.sub(replace, text)
