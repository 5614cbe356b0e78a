"""dbt-durable: durable, resumable workflow graphs of SQL steps, checkpointed in PostgreSQL.

dbt imports every top-level ``dbt_*`` module on each command, so this module must stay cheap
to import: the public API is loaded lazily from :mod:`dbt_durable.api`.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("Client", "Started", "parse_vars")


def __getattr__(name: str) -> Any:
    if name in _API:
        from dbt_durable import api

        return getattr(api, name)
    raise AttributeError(f"module 'dbt_durable' has no attribute {name!r}")
