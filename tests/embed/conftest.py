"""Embedding fixtures: the local endpoint (a child process, so it outlives a killed runner and
counts every request) and the example project wired to it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dbt_durable.embed.process import LocalEndpoint
from tests.dbt.conftest import DbtProject, example  # noqa: F401 (the example fixture)
from tests.embed.fixtures import embed_endpoint  # noqa: F401 (a fixture)


@pytest.fixture
def endpoint(embed_endpoint: LocalEndpoint) -> LocalEndpoint:  # noqa: F811
    """The session's endpoint, with its request log emptied for this test."""
    embed_endpoint.clear()
    return embed_endpoint


@pytest.fixture
def embed_project(example: DbtProject, endpoint: LocalEndpoint) -> Iterator[DbtProject]:  # noqa: F811
    """The example project, calling the local endpoint."""
    yield example
