"""The adapter: dbt-postgres's adapter plus the methods the dbt_durable macros call.

Every method is ``@available.parse(...)``: at parse time it returns a stub and does nothing,
so ``dbt parse`` and ``dbt compile`` never touch the durable state.
"""

from __future__ import annotations

from typing import Any

from dbt.adapters.base.meta import available
from dbt.adapters.postgres import PostgresAdapter
from dbt_common.exceptions import CompilationError, DbtRuntimeError

from dbt.adapters.durable.connections import DurableConnectionManager, DurableCredentials


def _stub(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"status": "parsing", "run_id": "", "message": "", "executed": 0, "skipped": 0}


class DurableAdapter(PostgresAdapter):
    ConnectionManager = DurableConnectionManager

    @classmethod
    def type(cls) -> str:
        return "durable"

    def _credentials(self) -> DurableCredentials:
        creds = self.config.credentials
        assert isinstance(creds, DurableCredentials)
        return creds

    def _settings(self, wait: str = "park", park_after: float | None = None) -> Any:
        from dbt_durable.bridge.models import settings_for

        creds = self._credentials()
        try:
            return settings_for(
                creds.durable_dsn(), creds.durable_schema, creds.durable_concurrency, wait, park_after
            )
        except ValueError as exc:
            raise CompilationError(str(exc)) from None

    @available.parse(_stub)
    def durable_run_model(
        self,
        flow_text: str,
        unique_id: str,
        origin: str,
        vars: dict[str, Any] | None = None,
        fresh: bool = False,
        wait: str = "park",
        park_after: float | None = None,
    ) -> dict[str, Any]:
        """Start or resume the durable run of one model (called by the materialization)."""
        from dbt_durable.bridge.models import run_model
        from dbt_durable.errors import DurableError, FlowError

        settings = self._settings(wait, park_after)
        text_vars = {str(k): str(v) for k, v in (vars or {}).items()}
        try:
            return run_model(settings, flow_text, unique_id, origin, text_vars, fresh).as_dict()
        except FlowError as exc:
            raise CompilationError(str(exc)) from None
        except DurableError as exc:
            raise DbtRuntimeError(str(exc)) from None

    @available.parse(lambda *a, **k: [])
    def durable_operation(self, name: str, args: dict[str, Any] | None = None) -> list[str]:
        """Run a durable run-operation (durable_run, durable_status, ...); returns log lines."""
        from dbt_durable.bridge.operations import run_operation
        from dbt_durable.errors import DurableError

        try:
            return run_operation(name, args or {}, self._settings(), self.config)
        except DurableError as exc:
            raise DbtRuntimeError(str(exc)) from None

    @available.parse_none
    def durable_register_schedule(
        self, unique_id: str, cron: str, tz: str, flow_text: str, catchup: str = "latest"
    ) -> None:
        """Register (or update) the schedule of a durable model: config durable_schedule."""
        from dbt_durable.api import Client
        from dbt_durable.errors import DurableError

        target = {"kind": "flow", "flow": flow_text, "flow_name": unique_id}
        try:
            Client(self._settings()).schedule_add(unique_id, cron, tz, target, catchup)
        except DurableError as exc:
            raise CompilationError(f"durable_schedule of {unique_id}: {exc}") from None
