"""HTTP steps: at least once, with a stable ``Idempotency-Key``; secrets masked in what is
stored and bound, so a replay sees exactly what the first execution saw."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dbt_durable.errors import DurableError
from dbt_durable.flow import ast as A
from dbt_durable.runner import faults
from dbt_durable.runner.http import (
    RequestInvalid,
    SecretValues,
    Throttled,
    multipart_files,
    render_request_text,
    run_http,
)
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
        files = _parts(ast, fill, secrets) if isinstance(ast, A.HttpMultipart) else None
        sending = run_http(
            ast,
            text["url"] or ast.url,
            text["body"],
            text["headers"],
            idempotency_key(run.run_id, step.key),
            run.settings.max_result_bytes,
            step.spec.timeout_s,
            files,
        )
        result = await limited(ast, text["url"] or ast.url, sending)  # concurrency=, rate=
    except Throttled as exc:
        raise Throttled(secrets.mask(str(exc)), exc.retry_after_s) from None
    except DurableError as exc:
        raise type(exc)(secrets.mask(str(exc))) from None
    faults.hit("in_step", step.key, run.flow_name)  # the response is in hand, not yet checkpointed
    stored = secrets.mask_json(result)
    await run.writer.checkpoint(step.key, step.node_id, step.kind, step.attempt, stored)
    return stored


_WHOLE_REF = re.compile(r"\$[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?\??")


def _parts(ast: A.HttpMultipart, fill: Callable[[str], str], secrets: SecretValues) -> Any:
    """The parts of an http_multipart() step, rendered: ``name``, ``filename`` and
    ``content_type`` interpolate ``{var}``/``$name``/``{env:NAME}`` as any request text;
    ``data_b64`` takes a reference only as its whole value (``'$speech.body'``), as in
    pg_durable: a reference spliced into base64 cannot give valid base64."""
    try:
        parts = json.loads(ast.parts or "")
    except ValueError as exc:
        raise RequestInvalid(f"http_multipart() parts must be a JSON array: {exc}") from None
    if not isinstance(parts, list):
        raise RequestInvalid("http_multipart() parts must be a JSON array of part objects")
    out = []
    for part in parts:
        if not isinstance(part, dict):
            out.append(part)
            continue
        part = dict(part)
        for key in ("name", "filename", "content_type"):
            if isinstance(part.get(key), str):
                part[key] = render_request_text(part[key], fill, secrets)
        data = part.get("data_b64")
        if isinstance(data, str) and "$" in data:
            if not _WHOLE_REF.fullmatch(data.strip()):
                raise RequestInvalid(
                    f"http_multipart() part {part.get('name')!r}: data_b64 mixes a reference with other "
                    "text; a reference must be its whole value, e.g. '$speech.body'"
                )
            part["data_b64"] = fill(data.strip())
        out.append(part)
    return multipart_files(out)
