"""An OpenAI-compatible embeddings endpoint for local use (``pip install 'dbt-durable[embed]'``).

``python -m dbt_durable.embed`` serves ``POST /v1/embeddings`` on 127.0.0.1 with wordllama, a
real 256-dimension embedding model shipped inside its wheel and loaded offline. A flow calls it
with ``http()`` like any hosted provider, so switching to OpenAI, Ollama or another
OpenAI-compatible server changes the base URL, the model and the API key only
(docs/embeddings.md). The endpoint records every request it receives with its
``Idempotency-Key`` (``GET /v1/requests``), so tests and benchmarks can count what was sent.

Kept out of ``dbt_durable/__init__``'s imports: dbt imports that module on every command.
"""
