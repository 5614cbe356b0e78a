"""Passwords in DSNs never reach output, errors, --json or the state tables."""

from __future__ import annotations

import subprocess
import sys

from psycopg import conninfo

from tests.conftest import Space

SECRET = "s3cr3t-Pw-7731"


def cli(dsn: str, schema: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dbt_durable", "--dsn", dsn, "--schema", schema, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_password_never_appears_in_output_errors_json_or_state(space: Space) -> None:
    # The embedded server trusts local connections, so the password is carried but unused.
    dsn = conninfo.make_conninfo(space.dsn, password=SECRET)
    outputs = [
        cli(dsn, space.schema, "start", "--wait", "--json", "'SELECT 1/0'"),
        cli(dsn, space.schema, "start", "--wait", "'SELECT 1' ~> 'SELECT $nope?'"),
        cli(dsn, space.schema, "status", "--json"),
        cli(dsn, space.schema, "worker", "--once"),
        cli(
            conninfo.make_conninfo("host=127.0.0.1 port=1 user=u dbname=d", password=SECRET),
            space.schema,
            "status",
        ),
        cli(f"postgresql://u:{SECRET}@127.0.0.1:1/d", space.schema, "status"),
    ]
    assert "***" in outputs[-1].stderr and "cannot connect" in outputs[-1].stderr
    for out in outputs:
        assert SECRET not in out.stdout + out.stderr
    dump = space.query(
        "SELECT (SELECT json_agg(r)::text FROM {state}.runs r) || "
        "(SELECT coalesce(json_agg(e)::text, '') FROM {state}.events e) || "
        "(SELECT coalesce(json_agg(n)::text, '') FROM {state}.nodes n)"
    )
    assert SECRET not in str(dump[0][0])
