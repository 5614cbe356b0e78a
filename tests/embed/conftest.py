"""Embedding fixtures: the local endpoint (a child process, so it outlives a killed runner and
counts every request) and the example project wired to it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dbt_durable.embed.process import LocalEndpoint
from tests.dbt.conftest import DbtProject, example  # noqa: F401 (the example fixture)

pytest.importorskip("wordllama", reason="needs the embed extra: pip install '.[embed]'")


@pytest.fixture(scope="session")
def endpoint() -> Iterator[LocalEndpoint]:
    with LocalEndpoint() as running:
        yield running


@pytest.fixture
def embed_project(example: DbtProject, endpoint: LocalEndpoint) -> Iterator[DbtProject]:  # noqa: F811
    """The example project, calling the local endpoint; its request log starts empty."""
    endpoint.clear()
    example.env.update(DBT_DURABLE_EMBED_URL=endpoint.base_url, DBT_DURABLE_HTTP_ALLOW="127.0.0.1")
    yield example
