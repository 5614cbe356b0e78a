"""Step text rendering: ``{var}`` text substitution, then ``$name`` references.

``{name}`` is plain text substitution of the run's vars and the ``sys_`` values: ``sys_run_id``
(= pg_durable's ``sys_instance_id``), ``sys_label`` (the run's name; pg_durable's label, '' when
there is none), ``sys_node`` and ``sys_idempotency_key``. Unknown names are left as written, and
so is a ``$name`` that nothing in the flow binds. ``$name`` references are rendered by :mod:`dbt_durable.runner.results`:
as quoted SQL literals in SQL text (``conn`` given), as their raw value in HTTP text.
"""

from __future__ import annotations

from typing import Any

from dbt_durable.flow.refs import VAR
from dbt_durable.runner import results
from dbt_durable.runner.values import RunState


def idempotency_key(run_id: str, key: str) -> str:
    """Stable across retries and resumes, so a receiver can deduplicate every attempt."""
    return f"{run_id}:{key}"


def substitute(state: RunState, text: str, key: str, conn: Any, raw: bool = False) -> str:
    """``text`` of the step with execution key ``key``, with vars and references filled in."""
    system = {
        "sys_run_id": state.run_id,
        "sys_instance_id": state.run_id,  # pg_durable's name
        "sys_label": state.label,
        "sys_node": key,
        "sys_idempotency_key": idempotency_key(state.run_id, key),
    }

    def var(m: Any) -> str:
        name = m["name"]
        if name in system:
            return system[name]
        return state.vars.get(name, m.group())

    text = VAR.sub(var, text)
    known = state.flow.bound_names
    if raw:
        return results.render_raw(text, state.bindings, known)
    return results.render(text, state.bindings, conn, known=known)
