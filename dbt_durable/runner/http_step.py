"""HTTP steps: at least once, with a stable ``Idempotency-Key``; secrets masked in what is
stored and bound, so a replay sees exactly what the first execution saw."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dbt_durable.errors import DurableError
from dbt_durable.flow import ast as A
from dbt_durable.runner import faults
from dbt_durable.runner.http import SecretValues, Throttled, render_request_text, run_http
from dbt_durable.runner.http_limits import limited
from dbt_durable.runner.render import idempotency_key, substitute
from dbt_durable.runner.values import Step

if TYPE_CHECKING:
    from dbt_durable.runner.run import RunExecution


async def http_step(run: RunExecution, step: Step) -> Any:
    """Send the request of HTTP step ``step`` and checkpoint its (masked) response."""
    ast = step.ast
    assert isinstance(ast, A.Http)
    secrets = SecretValues()

    def fill(piece: str) -> str:
        return substitute(run.state, piece, step.key, None, raw=True)

    # {env:NAME} is expanded in the flow's own text only, never in substituted values.
    text = {
        f: render_request_text(getattr(ast, f), fill, secrets) if getattr(ast, f) else None
        for f in ("url", "body", "headers")
    }
    try:
        sending = run_http(
            ast,
            text["url"] or ast.url,
            text["body"],
            text["headers"],
            idempotency_key(run.run_id, step.key),
            run.settings.max_result_bytes,
            step.spec.timeout_s,
        )
        result = await limited(ast, text["url"] or ast.url, sending)  # concurrency=, rate=
    except Throttled as exc:
        raise Throttled(secrets.mask(str(exc)), exc.retry_after_s) from None
    except DurableError as exc:
        raise type(exc)(secrets.mask(str(exc))) from None
    faults.hit("in_step", step.key, run.flow_name)  # the response is in hand, not yet checkpointed
    stored = secrets.mask_json(result)
    await run.writer.checkpoint(step.key, step.node_id, "http", step.attempt, stored)
    return stored
