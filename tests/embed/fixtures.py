"""The local embeddings endpoint as a session fixture, for every test that builds the example
project (its embedding model calls the endpoint through http())."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dbt_durable.embed.process import LocalEndpoint


@pytest.fixture(scope="session")
def embed_endpoint() -> Iterator[LocalEndpoint]:
    """``python -m dbt_durable.embed`` on 127.0.0.1 (a child process: it outlives a killed runner)."""
    with LocalEndpoint() as running:
        yield running


def wire(env: dict[str, str], endpoint: LocalEndpoint) -> None:
    """Point a dbt environment at ``endpoint`` and allow the loopback egress it needs."""
    allowed = [h for h in env.get("DBT_DURABLE_HTTP_ALLOW", "").split(",") if h]
    env.update(
        DBT_DURABLE_EMBED_URL=endpoint.base_url,
        DBT_DURABLE_HTTP_ALLOW=",".join(sorted({*allowed, "127.0.0.1"})),
    )
