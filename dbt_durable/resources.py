"""Files shipped next to the code: the runtime SQL and the example dbt project.

In a wheel they are installed as ``dbt_durable.runtime_sql`` and ``dbt_durable.example_project``;
in a source checkout they are the repository's ``runtime/`` and ``example_project/``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent


def _shipped(package: str, checkout_folder: str) -> Path:
    try:
        return Path(str(resources.files(package)))
    except ModuleNotFoundError:
        return _CHECKOUT / checkout_folder


def migrations_dir() -> Path:
    """The folder of versioned ``NNNN_name.sql`` migrations."""
    return _shipped("dbt_durable.runtime_sql.migrations", "runtime/migrations")


def example_project_dir() -> Path:
    """The example dbt project."""
    return _shipped("dbt_durable.example_project", "example_project")
