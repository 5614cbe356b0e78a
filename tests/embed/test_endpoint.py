"""The local endpoint speaks OpenAI's embeddings API and records what it receives."""

from __future__ import annotations

import base64
import socket

import httpx
import numpy as np
import pytest

from dbt_durable.embed.process import LocalEndpoint


def test_embeddings_in_openai_shape_with_dimensions_and_base64(endpoint: LocalEndpoint) -> None:
    url = f"{endpoint.base_url}/embeddings"
    answer = httpx.post(url, json={"input": ["garden tools", "sourdough"], "model": "m"}, timeout=30).json()
    assert answer["object"] == "list" and answer["model"] == "m" and answer["usage"]["total_tokens"] > 0
    assert [d["index"] for d in answer["data"]] == [0, 1]
    vector = np.array(answer["data"][0]["embedding"])
    assert vector.shape == (256,) and abs(np.linalg.norm(vector) - 1) < 1e-5
    small = httpx.post(url, json={"input": "garden tools", "dimensions": 64}, timeout=30).json()
    assert len(small["data"][0]["embedding"]) == 64
    packed = httpx.post(url, json={"input": "garden tools", "encoding_format": "base64"}, timeout=30).json()
    unpacked = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(unpacked, vector, atol=1e-6)
    bad = httpx.post(url, json={"input": []}, timeout=30)
    assert bad.status_code == 400 and "input" in bad.json()["error"]["message"]
    httpx.post(url, json={"input": "x"}, headers={"Idempotency-Key": "k-1"}, timeout=30)
    assert endpoint.requests()[-1] == {"key": "k-1", "inputs": 1, "status": 200}
    assert len(endpoint.requests()) == 5


def test_the_documented_command_serves_on_port_8765() -> None:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8765)) == 0:
            pytest.skip("port 8765 is in use")
    with LocalEndpoint(port=8765) as served:  # python -m dbt_durable.embed --port 8765
        assert served.base_url == "http://127.0.0.1:8765/v1"
        models = httpx.get(f"{served.base_url}/models", timeout=30).json()
        assert models["data"][0]["id"] == "wordllama-l2-supercat"
