"""Apply the runtime migrations in ``runtime/migrations`` in order.

Guarantees: migrations run under a transaction-level advisory lock, each in its own
transaction, each at most once. Running :func:`migrate` concurrently or repeatedly is safe.

The version applied is recorded twice: in ``<schema>.schema_version`` (for people) and in the
schema's comment, which only the schema's owner can set. The comment is the one trusted:
before version 7, granted roles could write ``schema_version``, so a forged row there must
never make migrate skip the migration that takes that right away.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from dbt_durable.errors import DurableError
from dbt_durable.resources import migrations_dir

MIGRATION_LOCK = 0x6462_7464_7572  # "dbtdur"


def schema_sql(text: str, schema: str) -> str:
    """``text`` with ``__SCHEMA__`` replaced by the quoted schema identifier."""
    return text.replace("__SCHEMA__", sql.Identifier(schema).as_string(None))


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, SQL) of every shipped migration, in version order."""
    found = []
    for entry in migrations_dir().iterdir():
        if entry.name.endswith(".sql") and entry.name[:1].isdigit():
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    return sorted(found)


def migrate(conn: psycopg.Connection, schema: str, create: bool = True) -> list[str]:
    """Bring ``schema`` up to date; returns the names of the migrations applied now.

    With ``create=False`` an absent schema is left absent (only an existing one is upgraded).
    """
    applied: list[str] = []
    ident = sql.Identifier(schema)
    shipped = migrations()
    current = _current_version(conn, schema)
    if current >= shipped[-1][0] or (current == 0 and not create):
        return applied  # up to date: no DDL, so roles without CREATE can use the schema
    for version, name, text in shipped:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {}.schema_version ("
                    " version integer PRIMARY KEY, name text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                ).format(ident)
            )
            if version <= _current_version(conn, schema):
                continue
            conn.execute(schema_sql(text, schema))
            # A row for this version that migrate did not write (see the module docstring)
            # gives way to the real one.
            conn.execute(
                sql.SQL("DELETE FROM {}.schema_version WHERE version >= %s").format(ident), (version,)
            )
            conn.execute(
                sql.SQL("INSERT INTO {}.schema_version (version, name) VALUES (%s, %s)").format(ident),
                (version, name),
            )
            conn.execute(sql.SQL("COMMENT ON SCHEMA {} IS {}").format(ident, sql.Literal(_marker(version))))
            applied.append(name)
    return applied


_MARKER = "dbt-durable state schema, version "


def _marker(version: int) -> str:
    return f"{_MARKER}{version}"


def _current_version(conn: psycopg.Connection, schema: str) -> int:
    """The version applied, from the schema's comment (owner-only); for schemas migrated
    before the comment existed, from ``schema_version``, but never past 6 unless version 7's
    own objects are there (a forged row cannot skip the security migration)."""
    row = conn.execute(
        "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = %s", (schema,)
    ).fetchone()
    if row is None:
        return 0
    comment = row[0] or ""
    if comment.startswith(_MARKER) and comment[len(_MARKER) :].isdigit():
        return int(comment[len(_MARKER) :])
    found = conn.execute(
        "SELECT to_regclass(%s)", (f"{sql.Identifier(schema).as_string(None)}.schema_version",)
    ).fetchone()
    if not found or found[0] is None:
        return 0
    row = conn.execute(
        sql.SQL("SELECT coalesce(max(version), 0) FROM {}.schema_version").format(sql.Identifier(schema))
    ).fetchone()
    recorded = int(row[0]) if row else 0
    return min(recorded, 6)


DF_ALIASES = "df_aliases.sql"


def apply_df_aliases(conn: psycopg.Connection, schema: str, alias_schema: str = "df") -> None:
    """Create (or refresh) pg_durable's ``df`` schema as aliases of ``schema``'s functions, and
    grant it to every role that has usage of ``schema``. Refuses a schema of that name that is
    not already dbt-durable's aliases of ``schema`` (pg_durable's own ``df``, for one)."""
    ident = sql.Identifier(alias_schema).as_string(None)
    state = sql.Identifier(schema).as_string(None)
    row = conn.execute(
        "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = %s", (alias_schema,)
    ).fetchone()
    if row is not None and row[0] != f"dbt-durable df aliases of {state}":
        raise DurableError(
            f"schema {alias_schema!r} exists and is not dbt-durable's aliases of {schema!r} "
            "(is pg_durable installed here?); drop it or choose another state schema"
        )
    text = (migrations_dir() / DF_ALIASES).read_text().replace("__DF__", ident)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(schema_sql(text, schema))
