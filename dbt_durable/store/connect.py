"""Opening connections, with errors that name the DSN and never its password."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from urllib.parse import quote, quote_plus

import psycopg
from psycopg import conninfo

from dbt_durable.errors import ConnectionFailed, RunNotFound

APP_PREFIX = "dbt_durable:"
MASK = "***"
SECRET_KEYS = ("password", "sslpassword")
_URI = re.compile(r"(?i)^\s*postgres(?:ql)?://")
_KV_SECRET = re.compile(r"""(?i)(\w*password\s*=\s*)('(?:[^'\\]|\\.)*'?|(?:[^\s\\]|\\.)+)""")
_URI_SECRET = re.compile(r"(?i)([?&][^=&#]*password=)[^&#]*")
_LOOSE_SECRET = re.compile(r"""(?i)(password\s*=?\s*)('(?:[^'\\]|\\.)*'?|(?:[^\s\\]|\\.)*)""")
_LOOSE_URI_SECRET = re.compile(r"(?i)(password\s*=?\s*)[^&#]*")


def mask_dsn(dsn: str) -> str:
    """``dsn`` with every password replaced by ``***``, whatever the DSN's shape.

    A DSN that libpq parses keeps its own form (URI or key=value) if masking it textually
    provably hides the password: the masked text must parse, with no password but ``***``,
    and no form of the password (raw or percent-encoded) may remain. Otherwise it is shown as
    key=value parameters rebuilt from the parse, the password as ``***``. A URI that libpq
    misreads (a ``/`` in the password) and a DSN that does not parse are masked conservatively:
    everything between ``://`` and the last ``@``, and whatever follows any ``password``.
    """
    try:
        params = conninfo.conninfo_to_dict(dsn)
    except Exception:  # psycopg.ProgrammingError for a malformed DSN; be safe on anything
        return _mask_loose(dsn)
    secrets = [str(v) for k, v in params.items() if k in SECRET_KEYS and v]
    if not any(k in params for k in SECRET_KEYS):
        return _mask_loose(dsn) if _URI.match(dsn) and _misread_userinfo(dsn, params) else dsn
    masked = _mask_uri(dsn) if _URI.match(dsn) else _KV_SECRET.sub(lambda m: m[1] + MASK, dsn)
    try:
        # Masking text only ever hides more, so the masked form is safe if it parses, holds
        # no password but "***", and shows no form of the password.
        again = conninfo.conninfo_to_dict(masked)
        if all(again.get(k) in (None, MASK) for k in SECRET_KEYS) and not _leaks(masked, secrets):
            return masked
    except Exception:  # the textual masking broke the DSN: rebuild it below
        pass
    return conninfo.make_conninfo(
        "", **{k: (MASK if k in SECRET_KEYS else _scrub(str(v), secrets)) for k, v in params.items()}
    )


def _scrub(value: str, secrets: list[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        value = value.replace(secret, MASK)
    return value


def _mask_uri(dsn: str) -> str:
    head = _URI.match(dsn)
    assert head is not None
    start = head.end()
    rest = dsn[start:]
    at, colon = rest.rfind("@"), rest.find(":")
    if 0 <= colon < at:
        rest = rest[: colon + 1] + MASK + rest[at:]
    return dsn[:start] + _URI_SECRET.sub(lambda m: m[1] + MASK, rest)


def _misread_userinfo(dsn: str, params: Mapping[str, object]) -> bool:
    """Whether libpq read a URI's ``user:password@`` as something else (it does when the
    password holds a ``/``: ``u:pa/ss@h`` is host ``u``, port ``pa``, dbname ``ss@h``)."""
    rest = dsn[dsn.find("://") + 3 :]
    query = rest.find("?")
    at, colon = rest.rfind("@", 0, query if query >= 0 else len(rest)), rest.find(":")
    ports = str(params.get("port", "")).split(",")
    return 0 <= colon < at or not all(p.strip().isdigit() or not p.strip() for p in ports)


def _leaks(text: str, secrets: list[str]) -> bool:
    low = text.lower()
    return any(
        form.lower() in low for s in secrets for form in (s, quote(s, safe=""), quote(s), quote_plus(s))
    )


def _mask_loose(dsn: str) -> str:
    start = dsn.find("://")
    if start >= 0:
        at = dsn.rfind("@")
        if at > start:
            dsn = dsn[: start + 3] + MASK + dsn[at:]
        return _LOOSE_URI_SECRET.sub(lambda m: m[1] + MASK, dsn)
    return _LOOSE_SECRET.sub(lambda m: m[1] + MASK, dsn)


def connect_kwargs(dsn: str, application_name: str) -> dict[str, object]:
    """Keyword arguments for psycopg connections of one runner."""
    try:
        conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        # libpq's own message can quote part of a malformed password, so it is not shown.
        raise ConnectionFailed(
            f"invalid DSN {mask_dsn(dsn)!r}: expected a postgresql:// URI or key=value pairs "
            "(quote values that contain spaces: password='a b')"
        ) from None
    # No server-side prepared statements: pooled sessions are reset with DISCARD ALL between
    # runs, which drops them behind psycopg's back.
    return {"autocommit": True, "application_name": application_name[:63], "prepare_threshold": None}


async def open_async(dsn: str, application_name: str) -> psycopg.AsyncConnection:
    """An autocommit async connection; raises :class:`ConnectionFailed` naming the DSN."""
    try:
        return await psycopg.AsyncConnection.connect(dsn, **connect_kwargs(dsn, application_name))  # type: ignore[arg-type]
    except psycopg.OperationalError as exc:
        raise ConnectionFailed(f"cannot connect to {mask_dsn(dsn)}: {str(exc).strip()}") from None


def open_sync(dsn: str, application_name: str = APP_PREFIX + "client") -> psycopg.Connection:
    """An autocommit sync connection; raises :class:`ConnectionFailed` naming the DSN."""
    try:
        return psycopg.connect(dsn, **connect_kwargs(dsn, application_name))  # type: ignore[arg-type]
    except psycopg.OperationalError as exc:
        raise ConnectionFailed(f"cannot connect to {mask_dsn(dsn)}: {str(exc).strip()}") from None


@contextmanager
def missing_state_as_not_found(schema: str) -> Iterator[None]:
    """Errors from a state schema that does not exist yet, as :class:`RunNotFound` saying how
    to create it; other errors pass through."""
    try:
        yield
    except (
        psycopg.errors.UndefinedTable,
        psycopg.errors.UndefinedFunction,
        psycopg.errors.InvalidSchemaName,
    ) as exc:
        if schema not in str(exc):
            raise
        raise RunNotFound(
            f"no dbt-durable state in schema {schema!r} of this database yet "
            "(start a run, or run `dbt-durable migrate`)"
        ) from None
