"""Fuzzing the argument parsers: --var pairs and run-operation --args."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbt_durable.api import parse_vars
from dbt_durable.bridge.operations import ACCEPTED, check_args
from dbt_durable.errors import ConfigError


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=30), max_size=5))
def test_parse_vars_returns_a_mapping_or_names_the_bad_item(items: list[str]) -> None:
    try:
        parsed = parse_vars(items)
    except ConfigError as err:
        assert any(repr(item) in str(err) or item.split("=")[0] in str(err) for item in items)
        return
    for item in items:
        name, _, value = item.partition("=")
        assert name in parsed
    assert all(k.isidentifier() for k in parsed)


def test_parse_vars_keeps_everything_after_the_first_equals() -> None:
    assert parse_vars(["where=a=1 AND b='x'"]) == {"where": "a=1 AND b='x'"}
    with pytest.raises(ConfigError, match="reserved"):
        parse_vars(["sys_run_id=1"])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(ACCEPTED)), st.dictionaries(st.text(max_size=12), st.integers(), max_size=5))
def test_run_operation_args_accept_known_keys_and_list_them_otherwise(op: str, args: dict[str, int]) -> None:
    unknown = set(args) - set(ACCEPTED[op])
    if not unknown:
        check_args(op, args)
        return
    with pytest.raises(ConfigError) as err:
        check_args(op, args)
    for key in ACCEPTED[op]:
        assert f"{key}:" in str(err.value)
