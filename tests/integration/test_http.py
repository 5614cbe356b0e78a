"""HTTP steps against a local server the test starts: retries with a stable idempotency key,
the response cap, header validation, and egress denial for every private range."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import Space


class Recorder(BaseHTTPRequestHandler):
    failures_left = 0
    seen: list[dict[str, str]] = []
    body_size = 10

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        Recorder.seen.append(
            {
                "key": self.headers.get("Idempotency-Key", ""),
                "body": body,
                "x": self.headers.get("X-Team", ""),
            }
        )
        if Recorder.failures_left > 0:
            Recorder.failures_left -= 1
            self.send_response(503)
            self.end_headers()
            return
        payload = b'{"ok": true, "pad": "' + b"x" * Recorder.body_size + b'"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Recorder.seen, Recorder.failures_left, Recorder.body_size = [], 0, 10
    monkeypatch.setenv("DBT_DURABLE_HTTP_ALLOW", "127.0.0.1")
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_retries_on_5xx_with_one_idempotency_key_then_binds_the_json(space: Space, server: str) -> None:
    Recorder.failures_left = 2
    flow = (
        f"http('{server}/hook', 'POST', '{{\"n\": 1}}', '{{\"X-Team\": \"data\"}}') with (retries=3, backoff='10ms')"
        " |=> 'resp' ~> 'SELECT $resp.status AS status, $resp.json AS doc'"
    )
    out = space.client().start(flow).outcome
    assert out is not None and out.status == "completed", out.error if out else None
    assert len(Recorder.seen) == 3
    keys = {r["key"] for r in Recorder.seen}
    assert keys == {f"{out.run_id}:0.0.0"}
    assert all(r["body"] == '{"n": 1}' and r["x"] == "data" for r in Recorder.seen)
    assert out.result["rows"] == [{"status": 200, "doc": {"ok": True, "pad": "x" * 10}}]


def test_response_over_the_cap_fails_clearly(space: Space, server: str) -> None:
    Recorder.body_size = 5000
    out = space.client(max_result_bytes=1000).start(f"http('{server}/big', 'POST')").outcome
    assert out is not None and out.status == "failed"
    assert "over the cap of 1000 bytes" in (out.error or "")


def test_bad_headers_are_refused_not_dropped(space: Space, server: str) -> None:
    out = space.client().start(f"http('{server}/h', 'POST', null, '[1, 2]')").outcome
    assert out is not None and out.status == "failed" and "headers must be a JSON object" in (out.error or "")
    out = space.client().start(f"http('{server}/h', 'POST', null, '{{\"A\": \"x\\r\\nB: y\"}}')").outcome
    assert out is not None and out.status == "failed" and "invalid value" in (out.error or "")
    assert Recorder.seen == []


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "[::1]",
        "[fd00::1]",
        "[fe80::1]",
        "[::ffff:10.0.0.1]",
    ],
)
def test_egress_to_private_loopback_link_local_and_metadata_is_denied(
    space: Space, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DBT_DURABLE_HTTP_ALLOW", raising=False)
    out = space.client().start(f"http('http://{host}:9/x')").outcome
    assert out is not None and out.status == "failed"
    assert "is denied" in (out.error or ""), out.error


def test_env_secrets_reach_the_server_but_are_never_stored(
    space: Space, server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "tok-9f8e7d6c5b4a"
    monkeypatch.setenv("DD_TEST_TOKEN", token)
    flow = f"http('{server}/s', 'POST', '{{\"auth\": \"{{env:DD_TEST_TOKEN}}\"}}', '{{\"X-Team\": \"{{env:DD_TEST_TOKEN}}\"}}')"
    out = space.client().start(flow).outcome
    assert out is not None and out.status == "completed", out
    assert Recorder.seen[0]["x"] == token and token in Recorder.seen[0]["body"]
    dump = space.query(
        "SELECT (SELECT json_agg(r)::text FROM {state}.runs r) || "
        "(SELECT coalesce(json_agg(n)::text, '') FROM {state}.nodes n) || "
        "(SELECT coalesce(json_agg(e)::text, '') FROM {state}.events e)"
    )
    assert token not in str(dump[0][0])
    assert "{env:DD_TEST_TOKEN}" in str(dump[0][0])  # the reference is what is stored


def test_missing_env_secret_fails_clearly(space: Space, server: str) -> None:
    out = space.client().start(f"http('{server}/s', 'POST', '{{env:DD_NOT_SET_ANYWHERE}}')").outcome
    assert out is not None and out.status == "failed"
    assert "no environment variable DD_NOT_SET_ANYWHERE" in (out.error or "")
