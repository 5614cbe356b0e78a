"""HTTP flow control against a scripted local server: 429/503 with Retry-After wait durably
without spending attempts (until the throttle_wait budget is spent), a long wait parks the run,
a lost response is resent with the same idempotency key, and concurrency= / rate= limit
what is in flight and how fast requests start."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dbt_durable.errors import FlowError
from dbt_durable.flow.parser import parse
from dbt_durable.runner.http_limits import parse_rate, retry_after_s
from tests.conftest import Space


class Scripted(BaseHTTPRequestHandler):
    """Answers from ``script`` in order (then 200): an int status, ``(status, retry_after)``,
    or ``"drop"`` (read the request, close the connection without answering)."""

    script: list[object] = []
    seen: list[str] = []
    delay_s = 0.0
    in_flight = 0
    max_in_flight = 0
    starts: list[float] = []
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        cls = Scripted
        with cls.lock:
            cls.seen.append(self.headers.get("Idempotency-Key", ""))
            cls.starts.append(time.monotonic())
            cls.in_flight += 1
            cls.max_in_flight = max(cls.max_in_flight, cls.in_flight)
            action = cls.script.pop(0) if cls.script else 200
        try:
            time.sleep(cls.delay_s)
            if action == "drop":
                self.close_connection = True
                self.connection.close()
                return
            status, retry_after = action if isinstance(action, tuple) else (action, None)
            body = b'{"ok": true}'
            self.send_response(int(status))
            if retry_after is not None:
                self.send_header("Retry-After", str(retry_after))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        finally:
            with cls.lock:
                cls.in_flight -= 1

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    Scripted.script, Scripted.seen, Scripted.starts = [], [], []
    Scripted.delay_s, Scripted.in_flight, Scripted.max_in_flight = 0.0, 0, 0
    monkeypatch.setenv("DBT_DURABLE_HTTP_ALLOW", "127.0.0.1")
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def events(space: Space, run_id: str, kind: str) -> int:
    rows = space.query("SELECT count(*) FROM {state}.events WHERE run_id = %s AND kind = %s", (run_id, kind))
    return int(rows[0][0])


def test_429_and_503_with_retry_after_wait_without_spending_attempts(space: Space, server: str) -> None:
    Scripted.script = [(429, "0.2"), (503, "0.2"), (429, "0")]
    flow = f"http('{server}/embed', 'POST', '{{}}') with (retries=0)"
    out = space.client().start(flow).outcome
    assert out is not None and out.status == "completed", out.error if out else None
    assert len(Scripted.seen) == 4 and set(Scripted.seen) == {f"{out.run_id}:0"}
    assert events(space, out.run_id, "node_throttled") == 3
    assert events(space, out.run_id, "node_retry") == 0
    assert space.query("SELECT status, attempts FROM {state}.nodes WHERE run_id = %s", (out.run_id,)) == [
        ("completed", 1)
    ]


def test_a_long_retry_after_parks_the_run_until_it_is_due(space: Space, server: str) -> None:
    Scripted.script = [(429, "2")]
    flow = f"http('{server}/embed', 'POST', '{{}}') with (retries=0) ~> 'SELECT 1 AS done'"
    client = space.client(park_after_s=0.5)
    out = client.start(flow).outcome
    assert out is not None and out.status == "waiting", out
    node = space.query(
        "SELECT status, wake_at IS NOT NULL FROM {state}.nodes WHERE run_id = %s", (out.run_id,)
    )
    assert node == [("waiting", True)]
    run = space.query("SELECT status, wake_at > now() FROM {state}.runs WHERE run_id = %s", (out.run_id,))
    assert run == [("waiting", True)]
    time.sleep(2.1)
    again = client.resume(out.run_id)
    assert again.status == "completed", again.error
    assert Scripted.seen == [f"{out.run_id}:0.0"] * 2


def test_throttling_past_the_budget_counts_as_failed_attempts(space: Space, server: str) -> None:
    Scripted.script = [(429, "5")] * 3
    flow = f"http('{server}/embed', 'POST', '{{}}') with (retries=1, backoff='10ms', throttle_wait='1s')"
    out = space.client().start(flow).outcome
    assert out is not None and out.status == "failed"
    assert "answered 429" in (out.error or "")
    assert len(Scripted.seen) == 2  # two attempts, no free waits: 5 s is over the 1 s budget


def test_a_429_without_retry_after_backs_off_and_is_free_within_the_budget(space: Space, server: str) -> None:
    Scripted.script = [429, 429]
    out = space.client().start(f"http('{server}/e', 'POST') with (retries=0, backoff='20ms')").outcome
    assert out is not None and out.status == "completed", out.error if out else None
    assert len(Scripted.seen) == 3


def test_a_lost_response_is_resent_with_the_same_idempotency_key(space: Space, server: str) -> None:
    Scripted.script = ["drop", "drop"]
    out = space.client().start(f"http('{server}/e', 'POST', '{{}}') with (retries=2, backoff='10ms')").outcome
    assert out is not None and out.status == "completed", out.error if out else None
    assert Scripted.seen == [f"{out.run_id}:0"] * 3
    assert events(space, out.run_id, "node_retry") == 2


def test_concurrency_limits_requests_in_flight_per_host(space: Space, server: str) -> None:
    Scripted.delay_s = 0.2
    step = f"http('{server}/e', 'POST') with (concurrency=2)"
    out = space.client().start(f"join({', '.join([step] * 6)})").outcome
    assert out is not None and out.status == "completed", out.error if out else None
    assert len(Scripted.seen) == 6 and Scripted.max_in_flight == 2


def test_rate_spaces_request_starts(space: Space, server: str) -> None:
    step = f"http('{server}/e', 'POST') with (rate='10/s')"
    out = space.client().start(f"join({', '.join([step] * 5)})").outcome
    assert out is not None and out.status == "completed", out.error if out else None
    starts = sorted(Scripted.starts)
    # 5 starts 0.1 s apart; the first connection may be slower to arrive than the others.
    assert starts[-1] - starts[1] >= 0.25, [round(b - a, 3) for a, b in zip(starts, starts[1:])]


def test_flow_control_options_are_checked_when_parsed() -> None:
    assert dict(
        parse("http('https://x.test/e') with (concurrency=4, rate='50/s', throttle_wait='10m')").options
    )
    for bad, message in [
        ("'SELECT 1' with (rate='5/s')", "applies to http() steps only"),
        ("http('https://x.test') with (concurrency=0)", "concurrency must be >= 1"),
        ("http('https://x.test') with (rate='fast')", "bad rate"),
        ("http('https://x.test') with (throttle_wait='soon')", ""),
    ]:
        with pytest.raises(FlowError, match=re.escape(message)):
            parse(bad)


def test_rate_and_retry_after_parsing() -> None:
    assert parse_rate("50/s") == 50 and parse_rate("3000/m") == 50 and parse_rate("7200/h") == 2
    assert retry_after_s("3") == 3.0 and retry_after_s(None) is None and retry_after_s("soon") is None
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: now
