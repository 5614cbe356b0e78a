"""The adapter: dbt-postgres's adapter plus the methods the dbt_durable macros call.

The methods that touch the durable state are ``@available.parse(...)``: at parse time they
return a stub and do nothing, so ``dbt parse`` and ``dbt compile`` never run a flow.
``durable_check_flow`` only parses text, so it runs at parse and compile time too.
"""

from __future__ import annotations

from typing import Any

from dbt.adapters.base.meta import available
from dbt.adapters.postgres import PostgresAdapter
from dbt_common.exceptions import CompilationError, DbtRuntimeError

from dbt.adapters.durable.connections import DurableConnectionManager, DurableCredentials


def _stub(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"status": "parsing", "run_id": "", "message": "", "executed": 0, "skipped": 0, "publish": False}


class DurableAdapter(PostgresAdapter):
    ConnectionManager = DurableConnectionManager

    def __init__(self, config: Any, mp_context: Any) -> None:
        super().__init__(config, mp_context)
        # run_results.json as nodes finish, so that dbt retry works after a kill -9
        from dbt_durable.bridge.partial_results import register

        root, target_path = getattr(config, "project_root", None), getattr(config, "target_path", None)
        if root and target_path:
            register(str(root), str(target_path))

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

    @available
    def durable_check_flow(self, flow_text: str, source: str | None, origin: str) -> str:
        """Raise dbt's CompilationError, at ``origin:LINE:COL`` of the model's source file, if
        ``flow_text`` (the rendered flow) is not a valid flow; returns ``''``."""
        from dbt_durable.bridge.models import check_flow
        from dbt_durable.errors import FlowError

        try:
            check_flow(flow_text, origin, source)
        except FlowError as exc:
            raise CompilationError(str(exc)) from None
        return ""

    @available.parse(_stub)
    def durable_run_model(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Start, resume or publish the durable run of one model (called by the materialization).

        ``spec``: the fields of :class:`dbt_durable.bridge.models.ModelSpec`, plus ``wait`` and
        ``park_after``."""
        from dbt_durable.bridge.models import MODES, ModelSpec, run_model
        from dbt_durable.errors import DurableError, FlowError

        spec = dict(spec)
        settings = self._settings(spec.pop("wait", "park"), spec.pop("park_after", None))
        mode = spec.pop("mode", "shadow")
        if mode not in MODES:
            raise CompilationError(f"durable_mode must be one of {', '.join(MODES)}, got {mode!r}")
        spec["vars"] = {str(k): str(v) for k, v in (spec.get("vars") or {}).items()}
        spec["key"] = None if spec.get("key") in (None, "") else str(spec["key"])
        for pair in ("target", "shadow"):
            if spec.get(pair) is not None:
                spec[pair] = tuple(spec[pair])
        try:
            return run_model(settings, ModelSpec(**spec)).as_dict()
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
        self,
        relation: str,
        cron: str,
        tz: str,
        flow_text: str,
        catchup: str = "latest",
        owner: dict[str, str] | None = None,
    ) -> None:
        """Register (or update) the schedule of a durable model (config durable_schedule). The
        schedule is named by the model's relation, so each target has its own; ``owner``
        (project, target, model) lets a later build remove it with the model or its config."""
        from dbt_durable.api import Client
        from dbt_durable.errors import DurableError

        target = {"kind": "flow", "flow": flow_text, "flow_name": relation, "dbt": dict(owner or {})}
        try:
            Client(self._settings()).schedule_add(relation, cron, tz, target, catchup)
        except DurableError as exc:
            raise CompilationError(f"durable_schedule of {relation}: {exc}") from None

    @available.parse(lambda *a, **k: [])
    def durable_reconcile_schedules(self, project: str, target: str, keep: list[str]) -> list[str]:
        """Remove the schedules that durable models of this project and target registered but
        no longer declare (config removed, or model gone). Returns the names removed."""
        from dbt_durable.bridge.models import reconcile_schedules
        from dbt_durable.errors import DurableError

        try:
            return reconcile_schedules(self._settings(), project, target, set(keep))
        except DurableError as exc:
            raise DbtRuntimeError(str(exc)) from None
