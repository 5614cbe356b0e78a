"""Limits at their edges: result caps, graph size and depth, and connection-pool exhaustion."""

from __future__ import annotations

from typing import Any

import pytest

from dbt_durable.errors import FlowError
from dbt_durable.graph import build
from dbt_durable.graph.build import compile_flow
from tests.conftest import Space


def test_result_cap_edge_exactly_at_the_cap_passes_one_over_fails(space: Space) -> None:
    client = space.client(max_result_rows=50)
    assert client.start("'SELECT g FROM generate_series(1, 50) g'").outcome.status == "completed"  # type: ignore[union-attr]
    over = client.start("'SELECT g FROM generate_series(1, 51) g'").outcome
    assert (
        over is not None and over.status == "failed" and "51 rows, over the cap of 50" in (over.error or "")
    )


def test_result_byte_cap(space: Space) -> None:
    out = space.client(max_result_bytes=1000).start("'SELECT repeat(''x'', 2000) AS big'").outcome
    assert out is not None and out.status == "failed" and "over the cap of 1000 bytes" in (out.error or "")


def test_graph_size_and_depth_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build, "MAX_NODES", 100)
    compile_flow(" ~> ".join(["'SELECT 1'"] * 98))  # 99 nodes with the sequence
    with pytest.raises(FlowError, match="more than 100 nodes"):
        compile_flow(" ~> ".join(["'SELECT 1'"] * 100))
    monkeypatch.setattr(build, "MAX_DEPTH", 5)
    with pytest.raises(FlowError, match="nested more than 5 levels"):
        compile_flow("loop(loop(loop(loop(loop(loop('SELECT 1'))))))")


def test_more_branches_than_connections_wait_their_turn_without_deadlock(space: Space) -> None:
    flow = " & ".join(["('SELECT pg_sleep(0.05)' ~> 'SELECT 1')"] * 6)
    out = space.client(concurrency=1).start(flow).outcome
    assert out is not None and out.status == "completed", out


def test_pool_exhaustion_times_out_with_a_clear_error(space: Space) -> None:
    out = space.client(concurrency=1, pool_timeout_s=0.3).start("'SELECT pg_sleep(2)' & 'SELECT 1'").outcome
    assert out is not None and out.status == "failed"
    assert "no database connection free within 0.3s" in (out.error or "")


def test_rowset_expansion_cap(space: Space) -> None:
    from dbt_durable.errors import BindingError
    from dbt_durable.runner.results import render

    rows: dict[str, Any] = {
        "rows": [{"i": n} for n in range(11)],
        "row_count": 11,
        "columns": [["i", "integer"]],
    }
    assert "VALUES" in render("SELECT * FROM $r.*", {"r": {**rows, "rows": rows["rows"][:10]}}, None, 10)
    with pytest.raises(BindingError, match="11 rows, over the cap of 10"):
        render("SELECT * FROM $r.*", {"r": rows}, None, 10)
