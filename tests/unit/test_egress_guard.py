"""The egress guard: only globally routable unicast addresses are reachable, whatever the
running Python's ipaddress tables say; embedded IPv4 addresses are judged as themselves."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from dbt_durable.runner.http import EgressDenied, _is_public, resolve_checked

ROWS = [
    # IPv4
    ("8.8.8.8", True),
    ("1.1.1.1", True),
    ("93.184.216.34", True),
    ("0.0.0.0", False),
    ("0.1.2.3", False),
    ("10.1.2.3", False),
    ("100.64.0.1", False),  # CGNAT
    ("100.127.255.254", False),
    ("127.0.0.1", False),
    ("127.255.255.254", False),
    ("169.254.169.254", False),  # cloud metadata
    ("172.16.0.1", False),
    ("172.31.255.255", False),
    ("172.32.0.1", True),
    ("192.0.0.9", False),  # IETF protocol assignments (Python 3.11 calls it global)
    ("192.0.2.1", False),
    ("192.88.99.1", False),
    ("192.168.1.1", False),
    ("198.18.0.1", False),  # benchmarking
    ("198.19.255.255", False),
    ("198.51.100.7", False),
    ("203.0.113.7", False),
    ("224.0.0.1", False),
    ("239.255.255.250", False),
    ("240.0.0.1", False),
    ("255.255.255.255", False),  # broadcast
    # IPv6
    ("2606:4700:4700::1111", True),
    ("2001:4860:4860::8888", True),
    ("::", False),
    ("::1", False),
    ("::10.0.0.1", False),  # deprecated IPv4-compatible
    ("::ffff:8.8.8.8", True),  # IPv4-mapped: judged by its IPv4
    ("::ffff:10.0.0.1", False),
    ("::ffff:127.0.0.1", False),
    ("::ffff:169.254.169.254", False),
    ("64:ff9b::8.8.8.8", True),  # well-known NAT64: judged by its IPv4
    ("64:ff9b::10.0.0.1", False),
    ("64:ff9b::127.0.0.1", False),
    ("64:ff9b:1::8.8.8.8", False),  # local-use NAT64
    ("100::1", False),  # discard-only
    ("2001::1", False),  # Teredo
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),
    ("2001:db8::1", False),
    ("2002:808:808::1", False),  # 6to4, even of a public IPv4
    ("2002:7f00:1::1", False),  # 6to4 of 127.0.0.1
    ("2002:a00:1::1", False),  # 6to4 of 10.0.0.1
    ("3fff::1", False),
    ("fc00::1", False),
    ("fd00::1", False),
    ("fe80::1", False),
    ("fe80::1%1", False),
    ("fec0::1", False),  # site-local
    ("ff02::1", False),
]


@pytest.mark.parametrize("address,allowed", ROWS, ids=[a for a, _ in ROWS])
def test_egress_guard(address: str, allowed: bool) -> None:
    assert _is_public(ipaddress.ip_address(address)) is allowed


def test_resolve_checked_denies_unless_the_host_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DBT_DURABLE_HTTP_ALLOW", raising=False)
    with pytest.raises(EgressDenied, match="127.0.0.1"):
        asyncio.run(resolve_checked("127.0.0.1", 80))
    monkeypatch.setenv("DBT_DURABLE_HTTP_ALLOW", "example.invalid, 127.0.0.1")
    assert asyncio.run(resolve_checked("127.0.0.1", 80)) == "127.0.0.1"
    with pytest.raises(EgressDenied, match="::1"):
        asyncio.run(resolve_checked("::1", 80))
