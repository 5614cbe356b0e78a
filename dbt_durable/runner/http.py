"""HTTP steps: httpx with a timeout, a response-size cap and an egress guard.

Secrets: ``{env:NAME}`` in a URL, body or headers is replaced, when the step runs, by the
runner's environment variable NAME. The value is never stored: not in the run (the flow text
keeps the reference), not in results or events, not in error messages (masked as ``***``).
Response headers that carry credentials (set-cookie, authorization) are masked in results.

Egress to loopback, private, link-local, multicast, reserved and cloud-metadata addresses is
denied unless ``DBT_DURABLE_HTTP_ALLOW`` lists the host (comma-separated). The check runs on
every address the name resolves to, and the request is sent to the checked address, so a
DNS answer that changes between check and connect (rebinding) cannot slip through.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import socket
from typing import Any
from urllib.parse import urlsplit

from dbt_durable.errors import BindingError, DurableError, ResultTooLarge
from dbt_durable.flow import ast as A

DEFAULT_TIMEOUT_S = 30.0
ENV_REF = re.compile(r"\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
CREDENTIAL_HEADERS = {"set-cookie", "authorization", "proxy-authorization", "cookie", "x-api-key"}


class SecretValues:
    """Fills ``{env:NAME}`` references and remembers the values, to mask them afterwards."""

    def __init__(self) -> None:
        self.values: set[str] = set()

    def fill(self, text: str) -> str:
        def value(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in os.environ:
                raise BindingError(f"{{env:{name}}}: the runner has no environment variable {name}")
            secret = os.environ[name]
            if secret:
                self.values.add(secret)
            return secret

        return ENV_REF.sub(value, text)

    def mask(self, text: str) -> str:
        for secret in sorted(self.values, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def mask_json(self, result: dict[str, Any]) -> dict[str, Any]:
        """``result`` with secrets and credential headers masked (what gets stored)."""
        headers = {k: ("***" if k.lower() in CREDENTIAL_HEADERS else v) for k, v in result["headers"].items()}
        masked: dict[str, Any] = json.loads(self.mask(json.dumps({**result, "headers": headers})))
        return masked


class EgressDenied(DurableError):
    """The HTTP step targets an address that is not allowed."""


class RequestInvalid(DurableError):
    """The request itself is malformed (headers, URL); retrying cannot help."""


class HttpFailed(DurableError):
    """The HTTP request failed (transport error or 5xx); retried per the node's options."""


def _allowed_hosts() -> set[str]:
    return {h.strip().lower() for h in os.environ.get("DBT_DURABLE_HTTP_ALLOW", "").split(",") if h.strip()}


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


async def resolve_checked(host: str, port: int) -> str:
    """An address of ``host`` that egress may reach; raises :class:`EgressDenied` otherwise."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise HttpFailed(f"cannot resolve {host!r}: {exc}") from None
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if host.lower() in _allowed_hosts():
        return str(addresses[0])
    denied = [str(a) for a in addresses if not _is_public(a)]
    if denied:
        raise EgressDenied(
            f"egress to {host} ({', '.join(denied)}) is denied: private, loopback, link-local and "
            "metadata addresses need DBT_DURABLE_HTTP_ALLOW"
        )
    return str(addresses[0])


def _headers(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError as exc:
        raise RequestInvalid(f"http() headers must be a JSON object: {exc}") from None
    if not isinstance(parsed, dict):
        raise RequestInvalid("http() headers must be a JSON object")
    out: dict[str, str] = {}
    for key, value in parsed.items():
        if not isinstance(value, (str, int, float)) or any(c in str(key) + str(value) for c in "\r\n\0"):
            raise RequestInvalid(f"http() header {key!r} has an invalid value")
        out[str(key)] = str(value)
    return out


async def run_http(
    ast: A.Http,
    url: str,
    body: str | None,
    headers_text: str | None,
    idempotency_key: str,
    max_bytes: int,
    timeout_s: float | None,
) -> dict[str, Any]:
    """Send the request; return ``{"status", "headers", "body", "json"}``.

    Raises :class:`HttpFailed` on transport errors and 5xx answers (retryable).
    """
    import httpx

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RequestInvalid(f"http() url {url!r} is not an http(s) URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = await resolve_checked(parts.hostname, port)
    headers = {"Idempotency-Key": idempotency_key, **_headers(headers_text)}
    timeout = timeout_s or ast.timeout_s or DEFAULT_TIMEOUT_S
    # Connect to the checked address; keep the name for Host and TLS verification.
    host = f"[{address}]" if ":" in address else address
    target = parts._replace(netloc=f"{host}:{port}").geturl()
    headers.setdefault("Host", parts.netloc)
    extensions: dict[str, Any] = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    try:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            async with client.stream(
                ast.method, target, content=body, headers=headers, extensions=extensions
            ) as resp:
                chunks, size = [], 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise ResultTooLarge(f"HTTP response is over the cap of {max_bytes} bytes")
                    chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise HttpFailed(f"{ast.method} {url}: {type(exc).__name__}: {exc}") from None
    text = b"".join(chunks).decode(resp.encoding or "utf-8", errors="replace")
    if resp.status_code >= 500:
        raise HttpFailed(f"{ast.method} {url} answered {resp.status_code}")
    try:
        parsed: Any = json.loads(text)
    except ValueError:
        parsed = None
    return {"status": resp.status_code, "headers": dict(resp.headers), "body": text, "json": parsed}
