"""HTTP steps: httpx with a timeout, a response-size cap and an egress guard.

Secrets: ``{env:NAME}`` in a URL, body or headers is replaced, when the step runs, by the
runner's environment variable NAME. Only the flow's own text is expanded: a value substituted
into the text (``$name``, ``{var}``) is inserted verbatim, never scanned for ``{env:...}``
(:func:`render_request_text`). If ``DBT_DURABLE_ENV_ALLOW`` is set (comma-separated names), only
the names it lists may be read; set but empty allows none. A value is never stored: not in
the run (the flow text keeps the reference), not in results or events, not in error messages
(masked as ``***`` in every encoding it may come back in: as is, URL-encoded and
JSON-escaped). Response headers that carry credentials (set-cookie, authorization) are masked
in results.

Egress is denied to every address that is not globally routable unicast: loopback, private,
CGNAT, link-local, multicast, broadcast, reserved, documentation and benchmark ranges, the
cloud-metadata address, and IPv6 transition forms (6to4, Teredo, local NAT64, site-local,
discard-only); an IPv4-mapped or well-known-NAT64 IPv6 address is judged by its embedded IPv4
address. Hosts listed in ``DBT_DURABLE_HTTP_ALLOW`` (comma-separated) are exempt. The check
runs on every address the name resolves to, and the request is sent to the checked address,
so a DNS answer that changes between check and connect (rebinding) cannot slip through.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

from dbt_durable.errors import BindingError, DurableError, ResultTooLarge
from dbt_durable.flow import ast as A
from dbt_durable.runner import http_limits

DEFAULT_TIMEOUT_S = 30.0
ENV_REF = re.compile(r"\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
ENV_ALLOW = "DBT_DURABLE_ENV_ALLOW"
CREDENTIAL_HEADERS = {"set-cookie", "authorization", "proxy-authorization", "cookie", "x-api-key"}
MASK = "***"


def _encodings(secret: str) -> set[str]:
    """The forms in which ``secret`` may come back in a response or an error message."""
    forms = {secret}
    # "" and "/": urllib's quote and quote_plus; the rest: httpx's URL normalisation, which
    # encodes only what may not appear in a URL.
    for safe in ("", "/", "!#$&'()*+,/:;=?@[]~", "!#$%&'()*+,/:;=?@[]~"):
        forms.add(quote(secret, safe=safe))
        forms.add(quote_plus(secret, safe=safe))
    for ascii_only in (True, False):
        escaped = json.dumps(secret, ensure_ascii=ascii_only)[1:-1]
        forms.add(escaped)
        forms.add(escaped.replace("/", "\\/"))  # some encoders escape "/" too
    return {f for f in forms if f}


def _pattern(form: str) -> str:
    # Hex digits of %XX and \uXXXX escapes match in either case; all else matches exactly.
    def hex_either(m: re.Match[str]) -> str:
        return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in m.group())

    escaped = re.escape(form)
    return re.sub(r"%[0-9A-F]{2}|\\\\u[0-9a-f]{4}", hex_either, escaped)


class SecretValues:
    """Fills ``{env:NAME}`` references and remembers the values, to mask them afterwards."""

    def __init__(self) -> None:
        self.values: set[str] = set()
        self._masker: re.Pattern[str] | None = None

    def value(self, name: str) -> str:
        """The environment variable ``name`` (remembered for masking).

        Raises :class:`BindingError` if it is not set, or not allowed by ``DBT_DURABLE_ENV_ALLOW``.
        """
        allow = os.environ.get(ENV_ALLOW)
        if allow is not None and name not in {n.strip() for n in allow.split(",")}:
            raise BindingError(f"{{env:{name}}}: {name} is not in {ENV_ALLOW}, so the runner may not read it")
        if name not in os.environ:
            raise BindingError(f"{{env:{name}}}: the runner has no environment variable {name}")
        secret = os.environ[name]
        if secret:
            self.values.add(secret)
            self._masker = None
        return secret

    def fill(self, text: str) -> str:
        """``text`` with every ``{env:NAME}`` replaced by its value. Only for the flow's own
        text; for text with substituted values use :func:`render_request_text`."""
        return ENV_REF.sub(lambda m: self.value(m.group(1)), text)

    def mask(self, text: str) -> str:
        """``text`` with every secret, in every encoding of :func:`_encodings`, as ``***``."""
        if not self.values:
            return text
        if self._masker is None:
            forms = {f for s in self.values for f in _encodings(s)}
            # Longest first, so a secret is masked whole rather than around a shorter one.
            self._masker = re.compile("|".join(_pattern(f) for f in sorted(forms, key=len, reverse=True)))
        return self._masker.sub(MASK, text)

    def mask_value(self, value: Any) -> Any:
        """``value`` (JSON data) with every string, keys included, masked."""
        if not self.values:  # nothing to mask: skip the walk (an embeddings response has 10^4 floats)
            return value
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, dict):
            return {self.mask(str(k)): self.mask_value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.mask_value(v) for v in value]
        return value

    def mask_json(self, result: dict[str, Any]) -> dict[str, Any]:
        """``result`` with secrets and credential headers masked (what gets stored)."""
        headers = {k: (MASK if k.lower() in CREDENTIAL_HEADERS else v) for k, v in result["headers"].items()}
        masked: dict[str, Any] = self.mask_value({**result, "headers": headers})
        return masked


def render_request_text(template: str, substitute: Callable[[str], str], secrets: SecretValues) -> str:
    """``template`` (a URL, body or headers of the flow) with ``{env:NAME}`` expanded and every
    other piece passed through ``substitute`` (``$name`` / ``{var}`` rendering).

    ``{env:NAME}`` is recognised in the template only: the pieces between the references are
    substituted separately and the secrets are joined in afterwards, so no substituted value
    is ever scanned for ``{env:...}`` and no secret is ever scanned for ``$name``.
    """
    out: list[str] = []
    pos = 0
    for m in ENV_REF.finditer(template):
        out += [substitute(template[pos : m.start()]), secrets.value(m.group(1))]
        pos = m.end()
    out.append(substitute(template[pos:]))
    return "".join(out)


class EgressDenied(DurableError):
    """The HTTP step targets an address that is not allowed."""


class RequestInvalid(DurableError):
    """The request itself is malformed (headers, URL); retrying cannot help."""


class HttpFailed(DurableError):
    """The HTTP request failed (transport error or 5xx); retried per the node's options."""


class Throttled(DurableError):
    """The server answered 429, or 503 with ``Retry-After``: wait (durably), then send again.

    ``retry_after_s`` is the server's ``Retry-After`` in seconds, or None if it gave none."""

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


def _allowed_hosts() -> set[str]:
    return {h.strip().lower() for h in os.environ.get("DBT_DURABLE_HTTP_ALLOW", "").split(",") if h.strip()}


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Denied whatever the running Python's ipaddress tables say (they differ between versions).
DENIED_V4 = [
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",
        "100.64.0.0/10",  # CGNAT shared space
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, cloud metadata
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and 255.255.255.255 broadcast
    )
]
DENIED_V6 = [
    ipaddress.IPv6Network(n)
    for n in (
        "::/96",  # unspecified, loopback and deprecated IPv4-compatible
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments, Teredo 2001::/32 among them
        "2001:db8::/32",  # documentation
        "2002::/16",  # 6to4: reaches any IPv4 address, private ones included
        "3fff::/20",  # documentation
        "5f00::/16",  # SRv6 SIDs
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
]
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _is_public(ip: IPAddress) -> bool:
    """Whether egress may reach ``ip``: globally routable unicast only (see the module doc)."""
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ipaddress.IPv6Address(ip.packed)  # drop any %scope
        embedded = ip.ipv4_mapped or (ipaddress.IPv4Address(ip.packed[-4:]) if ip in NAT64 else None)
        if embedded is not None:
            return _is_public(embedded)
        if any(ip in net for net in DENIED_V6):
            return False
    elif any(ip in net for net in DENIED_V4):
        return False
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


async def resolve_checked(host: str, port: int) -> str:
    """An address of ``host`` that egress may reach; raises :class:`EgressDenied` otherwise.

    Every address the name resolves to must be public (unless ``host`` is in
    ``DBT_DURABLE_HTTP_ALLOW``); the one returned is the one to connect to.
    """
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise HttpFailed(f"cannot resolve {host!r}: {exc}") from None
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if not addresses:
        raise HttpFailed(f"cannot resolve {host!r}: no addresses")
    if host.lower() in _allowed_hosts():
        return str(addresses[0])
    denied = [str(a) for a in addresses if not _is_public(a)]
    if denied:
        raise EgressDenied(
            f"egress to {host} ({', '.join(denied)}) is denied: private, loopback, link-local, "
            "metadata and other non-public addresses need DBT_DURABLE_HTTP_ALLOW"
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
        if not (str(key) + str(value)).isascii():  # httpx would fail on it with a bare UnicodeError
            raise RequestInvalid(f"http() header {key!r} is not ASCII; percent-encode its value")
        out[str(key)] = str(value)
    return out


# pg_durable's rule for a declared textual Content-Type (its body is kept as text).
_TEXT_MIMES = {
    "application/json",
    "application/xml",
    "application/javascript",
    "application/ecmascript",
    "application/x-www-form-urlencoded",
    "application/graphql",
    "application/yaml",
    "application/x-yaml",
}


def declared_textual(content_type: str | None) -> bool:
    """Whether ``content_type`` declares a textual body (text/*, JSON, XML, YAML, forms)."""
    mime = (content_type or "").split(",")[0].split(";")[0].strip().lower()
    if not mime:
        return False
    return mime.startswith("text/") or mime.endswith(("+json", "+xml", "+yaml")) or mime in _TEXT_MIMES


def response_body(raw: bytes, content_type: str | None, charset: str | None) -> tuple[str, str]:
    """(body, encoding) as pg_durable gives them: ``text`` for a declared textual type or for
    bytes that are UTF-8 without NUL; otherwise ``base64`` of the raw bytes."""
    import base64

    if declared_textual(content_type):
        return raw.decode(charset or "utf-8", errors="replace"), "text"
    if b"\x00" not in raw:
        try:
            return raw.decode("utf-8"), "text"
        except UnicodeDecodeError:
            pass
    return base64.b64encode(raw).decode("ascii"), "base64"


Files = list[tuple[str, tuple[str | None, bytes, str | None]]]


def multipart_files(parts: Any) -> Files:
    """httpx ``files`` for http_multipart() parts (``data_b64`` may contain whitespace, as
    ``encode(bytea, 'base64')`` writes it)."""
    import base64
    import binascii

    if not isinstance(parts, list) or not parts:
        raise RequestInvalid("http_multipart() parts must be a non-empty JSON array of part objects")
    files: Files = []
    for i, part in enumerate(parts):
        if not isinstance(part, dict) or not isinstance(part.get("name"), str):
            raise RequestInvalid(f"http_multipart() part {i} must be an object with a 'name'")
        data = part.get("data_b64")
        if not isinstance(data, str):
            raise RequestInvalid(f"http_multipart() part {part['name']!r} needs 'data_b64' (a base64 string)")
        try:
            content = base64.b64decode("".join(data.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RequestInvalid(
                f"http_multipart() part {part['name']!r}: data_b64 is not base64: {exc}"
            ) from None
        filename, ctype = part.get("filename"), part.get("content_type")
        if not isinstance(filename, (str, type(None))) or not isinstance(ctype, (str, type(None))):
            raise RequestInvalid(
                f"http_multipart() part {part['name']!r}: filename and content_type must be strings"
            )
        files.append((part["name"], (filename, content, ctype)))
    return files


async def run_http(
    ast: A.Http,
    url: str,
    body: str | None,
    headers_text: str | None,
    idempotency_key: str,
    max_bytes: int,
    timeout_s: float | None,
    files: Files | None = None,
) -> dict[str, Any]:
    """Send the request; return pg_durable's envelope ``{"status", "body", "encoding",
    "headers", "ok", "duration_ms"}`` plus ``json`` (the body parsed, or null). ``files``: the
    parts of a ``multipart/form-data`` body (http_multipart).

    Raises :class:`HttpFailed` on transport errors and 5xx answers (retryable),
    :class:`Throttled` on 429 (and on 503 with ``Retry-After``), and only
    :class:`DurableError` subclasses otherwise, so the caller can mask every message.
    """
    import time

    import httpx

    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise RequestInvalid(f"http() url {url!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RequestInvalid(f"http() url {url!r} is not an http(s) URL")
    address = await resolve_checked(parts.hostname, port)
    headers = {"Idempotency-Key": idempotency_key, **_headers(headers_text)}
    timeout = timeout_s or ast.timeout_s or DEFAULT_TIMEOUT_S
    # Connect to the checked address; keep the name for Host and TLS verification.
    host = f"[{address}]" if ":" in address else address
    target = parts._replace(netloc=f"{host}:{port}").geturl()
    headers.setdefault("Host", parts.netloc)
    extensions: dict[str, Any] = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    started = time.monotonic()
    payload: dict[str, Any] = {"files": files} if files is not None else {"content": body}
    try:
        async with httpx.AsyncClient(
            timeout=timeout, follow_redirects=False, verify=http_limits.tls_context()
        ) as client:
            async with client.stream(
                ast.method, target, headers=headers, extensions=extensions, **payload
            ) as resp:
                chunks, size = [], 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise ResultTooLarge(f"HTTP response is over the cap of {max_bytes} bytes")
                    chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise HttpFailed(f"{ast.method} {url}: {type(exc).__name__}: {exc}") from None
    except (httpx.InvalidURL, UnicodeError, ValueError) as exc:
        raise RequestInvalid(f"{ast.method} {url}: {type(exc).__name__}: {exc}") from None
    duration_ms = int((time.monotonic() - started) * 1000)
    text, encoding = response_body(b"".join(chunks), resp.headers.get("content-type"), resp.charset_encoding)
    retry_after = resp.headers.get("retry-after")
    if resp.status_code == 429 or (resp.status_code == 503 and retry_after):
        raise Throttled(
            f"{ast.method} {url} answered {resp.status_code}", http_limits.retry_after_s(retry_after)
        )
    if resp.status_code >= 500:
        raise HttpFailed(f"{ast.method} {url} answered {resp.status_code}")
    parsed: Any = None
    if encoding == "text":
        try:
            parsed = json.loads(text)
        except ValueError:
            pass
    return {
        "status": resp.status_code,
        "body": text,
        "encoding": encoding,
        "headers": dict(resp.headers),
        "ok": 200 <= resp.status_code < 300,
        "duration_ms": duration_ms,
        "json": parsed,
    }
