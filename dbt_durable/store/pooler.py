"""Detecting a connection pooler between a runner and PostgreSQL.

A runner relies on session state that lives in the server backend of a connection:

- a session advisory lock per run (the runner's liveness: Postgres drops it when the
  connection dies) and the lease fence around it;
- ``LISTEN`` for wake-ups (workers);
- a transaction that spans two round trips of one lane (``BEGIN; <step>`` then
  ``SELECT checkpoint_node(...); COMMIT``), which any pooler keeps on one backend.

A pooler in **session** mode (PgBouncer ``pool_mode = session``) gives each client connection
one backend for its whole life, so all of that holds. In **transaction** (or statement) mode,
consecutive transactions of one client connection may run on different backends, and
different clients share a backend between transactions: a run's advisory lock would stay with
a backend that now serves someone else, would not vanish when its runner dies, and could be
released (or not) by an unrelated session; notifications would go to whichever client happens
to hold the backend. Such a pooler must be refused.

:func:`detect` tells the two apart, without any pooler-specific command:

1. **Pooled at all?** libpq learns a backend's process id from the server's first message
   (``BackendKeyData``). A pooler sends its own, so ``conn.info.backend_pid`` differs from
   what ``pg_backend_pid()`` returns on the server.
2. **Shared between clients?** Two client connections A and B: A runs a statement, then B
   opens a transaction and reads ``pg_backend_pid()``. Without transaction pooling A's
   backend is A's alone, so B can never be on it. A transaction pooler returns A's backend
   to its pool after the statement and, reusing the most recently released backend first
   (PgBouncer's default), hands it to B: the same pid proves the sharing. The probe is
   repeated a few times; a pooler that never hands A's idle backend to B over all tries
   (round-robin server reuse under heavy load, say) goes undetected, which is why the
   documentation says to configure session mode rather than rely on this check.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from dbt_durable.errors import ConfigError
from dbt_durable.store.connect import APP_PREFIX, mask_dsn, open_sync

PROBES = 4


@dataclass(frozen=True)
class Pooler:
    """What :func:`detect` found: ``pooled`` (a pooler answers for the server) and
    ``shares_backends`` (client connections share server backends between transactions:
    transaction or statement pooling)."""

    pooled: bool
    shares_backends: bool

    @property
    def mode(self) -> str:
        if not self.pooled:
            return "direct"
        return "transaction" if self.shares_backends else "session"


def pooled(conn: psycopg.Connection) -> bool:
    """Whether ``conn`` reaches the server through a pooler (its backend pid is not libpq's)."""
    row = conn.execute(b"SELECT pg_backend_pid()").fetchone()
    return bool(row) and int(row[0]) != conn.info.backend_pid  # type: ignore[index]


def shares_backends(dsn: str, probes: int = PROBES) -> bool:
    """Whether two client connections to ``dsn`` can be served by one backend in turn."""
    with (
        open_sync(dsn, APP_PREFIX + "pooler-probe") as a,
        open_sync(dsn, APP_PREFIX + "pooler-probe") as b,
    ):
        for _ in range(probes):
            row = a.execute(b"SELECT pg_backend_pid()").fetchone()
            with b.transaction():
                other = b.execute(b"SELECT pg_backend_pid()").fetchone()
            if row and other and row[0] == other[0]:
                return True
    return False


def detect(dsn: str) -> Pooler:
    with open_sync(dsn, APP_PREFIX + "pooler-probe") as conn:
        if not pooled(conn):
            return Pooler(False, False)
    return Pooler(True, shares_backends(dsn))


def refuse_transaction_pooling(dsn: str) -> Pooler:
    """Raise :class:`ConfigError` if ``dsn`` goes through a transaction (or statement) pooler;
    return what was found otherwise."""
    found = detect(dsn)
    if found.shares_backends:
        raise ConfigError(
            f"{mask_dsn(dsn)} goes through a connection pooler in transaction (or statement) mode: "
            "client connections share server sessions, so a run's session advisory lock (its "
            "runner's liveness), its lease fence and LISTEN would follow the wrong client. Connect "
            "dbt-durable directly to PostgreSQL, or through a pool in session mode (PgBouncer: "
            "pool_mode = session, e.g. a second [databases] entry with pool_mode=session)."
        )
    return found
