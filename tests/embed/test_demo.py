"""``dbt-durable demo`` ends by answering a search with relevant documents, none twice."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from dbt_durable.demo import SEARCH, run_demo


def test_the_demo_answers_its_search_with_the_garden_document(
    pg_dsn: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DBT_DURABLE_HTTP_ALLOW", raising=False)
    home = Path(tempfile.mkdtemp(prefix="dbt-durable-demo-"))
    try:
        run_demo(pg_dsn, home)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"Documents nearest to '{SEARCH}': #1 Spring garden tools;"), last
    answers = last.split(": ", 1)[1].split("; ")
    assert len(answers) == 3 and len(set(answers)) == 3
