"""Compiling flows to networkx graphs: stable ids, hashes, validation and explain."""

from __future__ import annotations

import networkx as nx
import pytest

from dbt_durable.errors import FlowError
from dbt_durable.graph.build import compile_flow
from dbt_durable.graph.explain import explain

FLOW = "'a' |=> 'x' ~> ('select $x' & 'c') ~> ('select $x > 1' ?> 'd' !> 'e') ~> loop('f', 'g')"


def test_same_text_gives_same_ids_and_hash_whitespace_and_comments_ignored() -> None:
    one = compile_flow(FLOW)
    two = compile_flow("-- a comment\n" + FLOW.replace(" ~> ", "\n   ~> "))
    assert sorted(one.graph.nodes) == sorted(two.graph.nodes)
    assert one.graph_hash == two.graph_hash
    assert compile_flow(FLOW.replace("'c'", "'c2'")).graph_hash != one.graph_hash


def test_graph_is_a_tree_rooted_at_0_with_ordered_children() -> None:
    flow = compile_flow(FLOW)
    assert isinstance(flow.graph, nx.DiGraph)
    assert nx.is_arborescence(flow.graph)
    assert flow.children("0") == ("0.0", "0.1", "0.2", "0.3")
    assert [flow.graph.edges["0", k]["order"] for k in flow.children("0")] == [0, 1, 2, 3]
    assert flow.graph.nodes["0.1"]["kind"] == "join"
    assert flow.graph.nodes["0.0.0"]["kind"] == "sql"


@pytest.mark.parametrize(
    ("text", "message", "line", "col"),
    [
        ("'a' ~>\n 'select 1,\n $later' ~> ('b' |=> 'later')", "$later is bound only later", 3, 2),
    ],
)
def test_validation_errors_have_positions(text: str, message: str, line: int, col: int) -> None:
    with pytest.raises(FlowError) as err:
        compile_flow(text)
    assert message in err.value.message
    assert (err.value.line, err.value.col) == (line, col)


@pytest.mark.parametrize("text", ["break()", "'select $nope'", "if_rows('r', 'a')", "'a' ~> break('x')"])
def test_pg_durable_starts_these_so_we_do_too(text: str) -> None:
    # pg_durable leaves a never-bound $name as written, and fails break() outside a loop and
    # if_rows on an unbound name only when they execute.
    compile_flow(text)


def test_bindings_visible_in_later_loop_iterations_and_null_safe_refs_are_exempt() -> None:
    compile_flow("loop('select $n?' ~> ('select 1' |=> 'n'), 'select $n < 3')")
    compile_flow("'select $maybe?'")


def test_explain_shows_tree_and_statuses() -> None:
    flow = compile_flow(FLOW)
    text = explain(flow)
    assert text.splitlines()[0].startswith("0 ")
    assert "  0.1      join" in text
    with_status = explain(flow, {"0.0.0": "completed", "0.1.0": "failed"})
    lines = {
        line.split()[2] if line.split()[1] not in ("0",) else "0": line for line in with_status.splitlines()
    }
    assert "failed" in with_status.splitlines()[0]  # the root rolls up the failure
    assert any("completed" in line and "0.0.0" in line for line in lines.values())
