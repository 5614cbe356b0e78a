"""Execution plans: a stored run's AST as JSON, decoded instead of re-parsing the flow."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from dbt_durable.flow import ast as A
from dbt_durable.graph import plan
from dbt_durable.graph.build import FlowGraph, compile_flow, load_flow, recent
from tests.unit.test_parser import flows, names, texts

# Node kinds the parser tests' strategy does not make, and options of every value type.
more_leaves = st.one_of(
    st.builds(A.WaitSchedule, texts, st.none() | texts),
    st.builds(
        A.Http,
        texts,
        st.sampled_from(["GET", "POST"]),
        st.none() | texts,
        st.none() | texts,
        st.none() | st.floats(0, 100),
    ),
    st.builds(
        A.Sql,
        texts,
        options=st.just((("retries", 3), ("backoff", 1.5), ("timeout", "5m"), ("transaction", False))),
    ),
)
any_flow = st.one_of(
    flows,
    more_leaves,
    st.lists(flows | more_leaves, min_size=2, max_size=5).map(lambda items: A.Join(tuple(items))),
)


@settings(max_examples=300, deadline=None)
@given(any_flow)
def test_a_plan_decodes_to_the_same_ast_after_a_trip_through_json(node: A.Node) -> None:
    stored = json.loads(json.dumps(plan.encode(node)))
    assert plan.decode(stored) == node


@settings(max_examples=100, deadline=None)
@given(flows, names)
def test_a_decoded_plan_indexes_like_the_compiled_text(node: A.Node, _: str) -> None:
    from dbt_durable.flow.printer import to_text

    compiled = compile_flow(to_text(node), validated=True)
    decoded = plan.decode(json.loads(json.dumps(plan.encode(compiled.ast))))
    assert decoded is not None
    loaded = FlowGraph.of(decoded, compiled.text, "h")
    assert loaded.step_ids == compiled.step_ids
    assert [(n, loaded.children(n), loaded.node(n)) for n in loaded.graph.nodes] == [
        (n, compiled.children(n), compiled.node(n)) for n in compiled.graph.nodes
    ]


def test_a_missing_or_newer_plan_falls_back_to_the_flow_text() -> None:
    text = "'SELECT 1' ~> ('SELECT 2' & 'SELECT 3')"
    expected = compile_flow(text)
    recent.cache_clear()
    for stored in (None, {"version": plan.PLAN_VERSION + 1, "root": {"kind": "nope"}}, "garbage"):
        assert plan.decode(stored) is None
        flow = load_flow(None if stored is None else json.dumps(stored), expected.text)
        assert flow.ast == expected.ast


def test_the_networkx_graph_is_built_on_first_use_only() -> None:
    recent.cache_clear()
    flow = compile_flow("'SELECT 1' ~> 'SELECT 2'")
    assert "graph" not in vars(flow)
    assert sorted(flow.graph.edges) == [("0", "0.0"), ("0", "0.1")]
    assert "graph" in vars(flow)


def test_a_replay_reads_results_only_where_the_walk_uses_them() -> None:
    flow = compile_flow("'a' ~> ('b' |=> 'x') ~> 'c' ~> ('d' & 'e') ~> ('f' ?> 'g') ~> 'h'")
    # Steps in the middle of the sequence ('a', 'c') are skipped by their status alone; bound,
    # joined, conditional and last steps are read.
    skipped = {flow.node(n).text for n in flow.step_ids - flow.replay_results}  # type: ignore[attr-defined]
    assert skipped == {"a", "c"}
