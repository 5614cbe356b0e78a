"""Opening connections, with errors that name the DSN and never its password."""

from __future__ import annotations

import re

import psycopg
from psycopg import conninfo

from dbt_durable.errors import ConnectionFailed

APP_PREFIX = "dbt_durable:"


def mask_dsn(dsn: str) -> str:
    """``dsn`` with any password replaced by ``***`` (URI or key=value form)."""
    masked = re.sub(r"(://[^:/@]*:)[^@]*(@)", r"\1***\2", dsn)
    masked = re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", masked, flags=re.I)
    return masked


def connect_kwargs(dsn: str, application_name: str) -> dict[str, object]:
    """Keyword arguments for psycopg connections of one runner."""
    try:
        conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise ConnectionFailed(f"invalid DSN {mask_dsn(dsn)!r}: {exc}") from None
    return {"autocommit": True, "application_name": application_name[:63]}


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
