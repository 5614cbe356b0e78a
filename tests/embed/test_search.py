"""The example project's embedding model end to end: real topics, relevant answers."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from dbt_durable.embed.process import LocalEndpoint
from tests.dbt.conftest import DbtProject
from tests.embed.search_cases import QUERIES

NEAREST_DOCUMENTS = """
SELECT doc_id, title FROM (
    SELECT DISTINCT ON (e.doc_id) e.doc_id, d.title, e.embedding <=> %s::vector AS distance
    FROM {shop}.doc_embeddings e JOIN {raw}.embedding_docs d USING (doc_id)
    ORDER BY e.doc_id, distance) AS best
ORDER BY distance LIMIT 3
"""


def embed_query(endpoint: LocalEndpoint, text: str) -> str:
    answer = httpx.post(f"{endpoint.base_url}/embeddings", json={"input": text}, timeout=30).json()
    return str(answer["data"][0]["embedding"])


def nearest(project: DbtProject, endpoint: LocalEndpoint, query: str) -> list[tuple[object, ...]]:
    vector = embed_query(endpoint, query)
    text = NEAREST_DOCUMENTS.replace("{raw}", f"{project.schema}_raw").replace("%s", f"'{vector}'")
    return project.query(text)


def test_ten_queries_find_their_documents(embed_project: DbtProject, endpoint: LocalEndpoint) -> None:
    done = embed_project.dbt("build", "--select", "doc_embeddings")
    assert done.returncode == 0, done.stdout[-3000:]
    chunks = embed_project.query("SELECT count(*), count(DISTINCT doc_id) FROM {shop}.doc_chunks")[0]
    vectors = embed_project.query("SELECT count(*), count(DISTINCT chunk_id) FROM {shop}.doc_embeddings")[0]
    assert chunks == (120, 30) and vectors == (120, 120)
    # 16 chunks per request: ceil(120 / 16) requests, each sent once, each with its own key.
    sent = endpoint.requests()
    assert len(sent) == 8 and len({r["key"] for r in sent}) == 8
    assert [r["inputs"] for r in sent] == [16] * 7 + [8]
    right = 0
    for query, expected in QUERIES:
        answers = nearest(embed_project, endpoint, query)
        assert len({doc for doc, _ in answers}) == len(answers)  # no duplicates
        right += answers[0][0] == expected
    assert right >= 9, f"{right} of {len(QUERIES)} top-1 answers right"
    index = embed_project.query(
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'doc_embeddings_hnsw' AND schemaname = '"
        + f"{embed_project.schema}_shop'"
    )
    assert index and "hnsw" in str(index[0][0])


def test_the_documented_hosted_provider_variable_switches_provider(
    embed_project: DbtProject, endpoint: LocalEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The OpenAI command of docs/embeddings.md, with its base URL pointed at the local endpoint:
    the API key comes from the environment, is sent, and is stored nowhere."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "embeddings.md").read_text()
    command = re.search(
        r"dbt build --select doc_embeddings --vars '(\{embeddings: \{base_url: \"https://api.openai.com.*?\}\})'",
        doc,
        re.S,
    )
    assert command is not None
    provider = command.group(1).replace("https://api.openai.com/v1", endpoint.base_url)
    embed_project.env["OPENAI_API_KEY"] = "sk-test-4f3e2d1c"
    done = embed_project.dbt("build", "--select", "doc_embeddings", "--vars", provider)
    assert done.returncode == 0, done.stdout[-3000:]
    assert embed_project.query("SELECT count(*) FROM {shop}.doc_embeddings") == [(120,)]
    assert len(endpoint.requests()) == 8
    stored = embed_project.query(
        "SELECT (SELECT json_agg(n)::text FROM {state}.nodes n) || (SELECT json_agg(r)::text FROM {state}.runs r)"
    )
    assert "sk-test-4f3e2d1c" not in str(stored) and "{env:OPENAI_API_KEY}" in str(stored)


def test_the_documented_ollama_variable_compiles_to_its_endpoint_and_size(embed_project: DbtProject) -> None:
    """The Ollama command of docs/embeddings.md (no Ollama here: compiled, not run)."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "embeddings.md").read_text()
    command = re.search(
        r"--vars '(\{embeddings: \{base_url: \"http://localhost:11434/v1\".*?\}\})'", doc, re.S
    )
    assert command is not None
    done = embed_project.dbt("compile", "--select", "doc_embeddings", "--vars", command.group(1))
    assert done.returncode == 0, done.stdout[-3000:]
    compiled = next((embed_project.path / "target" / "compiled").rglob("doc_embeddings.sql")).read_text()
    assert "http('http://localhost:11434/v1/embeddings'" in compiled
    assert "vector(768)" in compiled and "'nomic-embed-text'" in compiled
