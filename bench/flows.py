"""Flow texts for the scenarios, and the JSON document equivalent to a generated flow."""

from __future__ import annotations

from typing import Any

TRIVIAL = "'SELECT 1'"
BIND_NAMES = 50  # generated flows rebind a bounded set of names, as real flows do


def sequential(n: int, last: str = TRIVIAL) -> str:
    """``'SELECT 1' ~> 'SELECT 1' ~> ...`` with ``n`` steps, the last one being ``last``."""
    return " ~> ".join([TRIVIAL] * (n - 1) + [last])


def fanout(n: int, sleep_s: float) -> str:
    """``join('SELECT pg_sleep(s)', ...)`` with ``n`` independent steps."""
    step = f"'SELECT pg_sleep({sleep_s})'"
    return "join(" + ", ".join([step] * n) + ")"


# One group of a generated planning flow: a bind, a join holding a nested sequence, a
# use of the bound name. Nine graph nodes: bind, sql, join, sql, seq, sql, sql, sql, sql.
GROUP_NODES = 9


def _group_text(g: int) -> str:
    name = f"v_{g % BIND_NAMES}"
    return (
        f"('SELECT {g} AS v' |=> '{name}')"
        f" ~> join('SELECT ${name} + 1', 'SELECT 2' ~> 'SELECT 3', 'SELECT 4')"
        f" ~> 'SELECT ${name} * 2'"
    )


def _group_doc(g: int) -> list[dict[str, Any]]:
    name = f"v_{g % BIND_NAMES}"
    return [
        {"kind": "bind", "name": name, "body": {"kind": "sql", "text": f"SELECT {g} AS v"}},
        {
            "kind": "join",
            "items": [
                {"kind": "sql", "text": f"SELECT ${name} + 1"},
                {
                    "kind": "seq",
                    "items": [{"kind": "sql", "text": "SELECT 2"}, {"kind": "sql", "text": "SELECT 3"}],
                },
                {"kind": "sql", "text": "SELECT 4"},
            ],
        },
        {"kind": "sql", "text": f"SELECT ${name} * 2"},
    ]


def planning(n: int) -> tuple[str, dict[str, Any]]:
    """A flow of about ``n`` graph nodes (sequences, joins, binds), and the same tree as JSON.

    The top level is one sequence of groups, so the graph stays shallow (the validator caps
    nesting depth) while the node count grows.
    """
    groups = max(1, (n - 1) // GROUP_NODES)
    text = "\n~> ".join(_group_text(g) for g in range(groups))
    items: list[dict[str, Any]] = []
    for g in range(groups):
        items.extend(_group_doc(g))
    return text, {"kind": "seq", "items": items}


def clear_compile_caches() -> int:
    """Empty the engine's in-process caches of compiled flows; returns how many were found.

    A measurement that follows calls it to pay what a new process pays (``dbt-durable start``,
    ``dbt-durable resume`` after a crash). Every cache in the graph module
    (anything with a ``cache_clear``: ``functools`` caches, the ``FlowCache``) counts.
    """
    from dbt_durable.graph import build

    found = 0
    for value in list(vars(build).values()):
        clear = None if isinstance(value, type) else getattr(value, "cache_clear", None)
        if callable(clear):
            clear()
            found += 1
    return found
