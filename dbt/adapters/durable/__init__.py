"""The dbt adapter plugin for profile ``type: durable``: Postgres plus the durable runtime."""

from dbt.adapters.base import AdapterPlugin

from dbt.adapters.durable.connections import DurableConnectionManager, DurableCredentials
from dbt.adapters.durable.impl import DurableAdapter
from dbt.include import durable

__all__ = ["DurableAdapter", "DurableConnectionManager", "DurableCredentials", "Plugin"]

Plugin = AdapterPlugin(
    adapter=DurableAdapter,  # type: ignore[arg-type]
    credentials=DurableCredentials,
    include_path=durable.PACKAGE_PATH,
    dependencies=["postgres"],
    # dbt treats macros of a plugin whose project_name matches as internal (flattened into the
    # global namespace). Naming the plugin differently from its dbt_project.yml keeps the macros
    # in their own `dbt_durable` namespace, so models can call dbt_durable.flow().
    project_name="dbt_durable_adapter",
)
