"""Credentials of profile ``type: durable``: the Postgres fields plus the durable options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dbt.adapters.postgres.connections import PostgresConnectionManager, PostgresCredentials


@dataclass
class DurableCredentials(PostgresCredentials):
    """Same fields as ``type: postgres``, plus ``durable_schema`` and ``durable_concurrency``."""

    durable_schema: str = "dbt_durable"
    durable_concurrency: int = 8

    @property
    def type(self) -> str:
        return "durable"

    def _connection_keys(self) -> tuple[str, ...]:
        keys: tuple[str, ...] = super()._connection_keys()
        return keys + ("durable_schema", "durable_concurrency")

    def durable_dsn(self) -> str:
        """A libpq connection string for dbt-durable's own (psycopg 3) connections."""
        from psycopg import conninfo

        options = []
        if self.search_path:
            options.append("-c search_path={}".format(self.search_path.replace(" ", "\\ ")))
        if self.role:
            options.append(f"-c role={self.role}")
        params: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password or None,
            "dbname": self.database,
            "connect_timeout": self.connect_timeout,
            "sslmode": self.sslmode,
            "sslcert": self.sslcert,
            "sslkey": self.sslkey,
            "sslrootcert": self.sslrootcert,
            "options": " ".join(options) or None,
        }
        return conninfo.make_conninfo(**{k: v for k, v in params.items() if v is not None})


class DurableConnectionManager(PostgresConnectionManager):
    TYPE = "durable"
