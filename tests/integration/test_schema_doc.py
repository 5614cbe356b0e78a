"""docs/schema.md shows the schema the migrations build (regenerate it with the command in it)."""

from __future__ import annotations

from pathlib import Path

from dbt_durable.store.schema_doc import generate

DOC = Path(__file__).resolve().parents[2] / "docs" / "schema.md"


def test_the_schema_document_is_current(pg_dsn: str) -> None:
    assert DOC.read_text() == generate(pg_dsn), (
        "docs/schema.md is out of date: run python -m dbt_durable.store.schema_doc DSN"
    )
