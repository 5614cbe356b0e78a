"""``POST /v1/embeddings`` (OpenAI's request and response shape), and a record of requests.

Request: ``{"input": "text" | ["text", ...], "model": ..., "dimensions": n?,
"encoding_format": "float" | "base64"?}``. Response: ``{"object": "list", "data": [{"object":
"embedding", "index": i, "embedding": [...]}], "model": ..., "usage": {...}}``, with
``data[i]`` the vector of ``input[i]``. Floats are the model's float32 values, each written
in the shortest form that reads back as the same float32 (orjson).

``GET /v1/requests`` lists every embeddings request received, in order, as ``{"key":
Idempotency-Key or null, "inputs": n, "status": code}``; ``DELETE /v1/requests`` clears it.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from dbt_durable.embed.model import DIMENSIONS, MODEL_NAME, Embedder

MAX_INPUTS = 2048  # OpenAI's limit per request


@dataclass
class RequestLog:
    """Every embeddings request the endpoint received (thread-safe; in memory)."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, key: str | None, inputs: int, status: int) -> None:
        with self.lock:
            self.entries.append({"key": key, "inputs": inputs, "status": status})

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.entries)

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()


def _error(message: str, status: int) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"message": message, "type": "invalid_request_error"}}


def embeddings_response(embedder: Embedder, payload: Any) -> tuple[int, dict[str, Any]]:
    """The status and JSON answer for one embeddings request body (already parsed)."""
    if not isinstance(payload, dict) or "input" not in payload:
        return _error("the body must be a JSON object with 'input'", 400)
    texts = payload["input"]
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        return _error("'input' must be a string or a non-empty array of strings", 400)
    if len(texts) > MAX_INPUTS:
        return _error(f"at most {MAX_INPUTS} inputs per request", 400)
    dimensions = payload.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int) or not 1 <= dimensions <= DIMENSIONS):
        return _error(f"'dimensions' must be an integer from 1 to {DIMENSIONS}", 400)
    encoding = payload.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        return _error("'encoding_format' must be 'float' or 'base64'", 400)
    vectors = embedder.embed(texts, dimensions)
    if encoding == "base64":  # little-endian float32, as OpenAI sends it
        rows: list[Any] = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
    else:
        rows = list(vectors)  # float32 rows: orjson writes them exactly
    tokens = embedder.count_tokens(texts)
    return 200, {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)],
        "model": str(payload.get("model") or MODEL_NAME),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def create_app(embedder: Embedder | None = None, log: RequestLog | None = None) -> Any:
    """The Starlette application. The model is loaded here, once, not per request."""
    import orjson
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    model = embedder or Embedder()
    requests = log or RequestLog()

    async def embeddings(request: Request) -> Response:
        key = request.headers.get("idempotency-key")
        try:
            payload = json.loads(await request.body())
        except ValueError:
            status, answer = _error("the body is not JSON", 400)
        else:
            status, answer = embeddings_response(model, payload)
        inputs = len(answer["data"]) if status == 200 else 0
        requests.add(key, inputs, status)
        body = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
        return Response(body, status_code=status, media_type="application/json")

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": MODEL_NAME, "object": "model"}]})

    async def request_log(request: Request) -> Response:
        if request.method == "DELETE":
            requests.clear()
            return JSONResponse({"cleared": True})
        return JSONResponse({"requests": requests.snapshot()})

    app = Starlette(
        routes=[
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/requests", request_log, methods=["GET", "DELETE"]),
        ]
    )
    app.state.requests = requests
    return app
