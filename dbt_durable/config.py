"""Runtime settings, with defaults that suit one machine and a shared database."""

from __future__ import annotations

import re
from dataclasses import dataclass

from dbt_durable.errors import ConfigError

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Settings:
    """How a runner talks to Postgres and how it bounds its work.

    ``lease_ttl_s`` covers a runner that is alive but cut off; a dead runner is detected at
    once through its session advisory lock. ``heartbeat_s`` also bounds how quickly a cancel
    interrupts a running statement. ``dbt_projects``: see the field. ``park_after_s``: a wait (sleep, schedule, signal) longer
    than this parks the run as ``waiting`` and returns, instead of blocking (None: block).
    """

    dsn: str
    schema: str = "dbt_durable"
    concurrency: int = 8
    lease_ttl_s: float = 15.0
    heartbeat_s: float = 1.0
    claim_wait_s: float = 10.0
    max_result_rows: int = 10_000
    max_result_bytes: int = 16 * 1024 * 1024
    reconnect_timeout_s: float = 60.0
    pool_timeout_s: float = 60.0
    park_after_s: float | None = None
    # Folders of the dbt projects whose durable builds this runner may execute. A build run's
    # project folder comes from a row its submitter wrote, so it is never trusted on its own.
    dbt_projects: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _SCHEMA_NAME.match(self.schema):
            raise ConfigError(f"invalid schema name {self.schema!r}: use lower-case letters, digits and _")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {self.concurrency}")
