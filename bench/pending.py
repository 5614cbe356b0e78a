"""Scenarios of features that may not be in this checkout yet (checked through the CLI)."""

from __future__ import annotations

from functools import cache

from bench.result import ScenarioResult


@cache
def cli_commands() -> frozenset[str]:
    """The subcommands of ``dbt-durable`` as this checkout defines them (empty if it won't import)."""
    try:
        from dbt_durable.cli import main
    except Exception:  # a broken CLI must not hide the other results
        return frozenset()
    return frozenset(getattr(main, "commands", {}))


def missing(res: ScenarioResult, command: str, metrics: list[str]) -> bool:
    """True (and ``metrics`` recorded as null) if ``dbt-durable COMMAND`` does not exist."""
    if command in cli_commands():
        return False
    res.skip(metrics, "not implemented yet")
    res.notes["cli_commands"] = sorted(cli_commands())
    return True
