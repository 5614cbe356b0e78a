"""Secrets: {env:NAME} is expanded only in the flow's own text, only for allowed names, and a
secret never comes back unmasked, in any encoding: not in errors, results or the state tables."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, quote_plus, unquote, urlsplit

import pytest

from dbt_durable.errors import BindingError
from dbt_durable.runner.http import SecretValues, _encodings, render_request_text
from dbt_durable.runner.results import render_raw
from tests.conftest import Space

SECRET = "pä ss/wörd&=+"
TOKEN = "tok-9f8e7d6c5b4a"  # an ASCII one, for headers


def _forms(secret: str) -> list[str]:
    """Every encoding the secret may appear in, as stored (jsonb text escapes once more)."""
    forms = set(_encodings(secret))
    forms |= {json.dumps(f)[1:-1] for f in list(forms)}
    forms |= {f.lower() for f in forms} | {f.upper() for f in forms if "%" in f}
    return sorted(forms)


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> SecretValues:
    monkeypatch.setenv("DD_SECRET", SECRET)
    monkeypatch.setenv("DD_TOKEN", TOKEN)
    monkeypatch.delenv("DBT_DURABLE_ENV_ALLOW", raising=False)
    values = SecretValues()
    assert values.fill("{env:DD_SECRET} {env:DD_TOKEN}") == f"{SECRET} {TOKEN}"
    return values


@pytest.mark.parametrize(
    "encoded",
    [
        SECRET,
        quote(SECRET),
        quote(SECRET, safe=""),
        quote(SECRET).lower(),
        quote_plus(SECRET),
        quote_plus(SECRET, safe="/"),
        "p%C3%A4%20ss/w%C3%B6rd&=+",  # httpx's URL form
        json.dumps(SECRET)[1:-1],
        json.dumps(SECRET, ensure_ascii=False)[1:-1],
        json.dumps(SECRET)[1:-1].replace("u00e4", "u00E4"),
        json.dumps(SECRET)[1:-1].replace("/", "\\/"),
        TOKEN,
    ],
)
def test_every_encoding_of_a_secret_is_masked(secrets: SecretValues, encoded: str) -> None:
    masked = secrets.mask(f"before {encoded} after")
    assert masked == "before *** after"


def test_mask_json_masks_keys_values_and_credential_headers(secrets: SecretValues) -> None:
    result = {
        "status": 200,
        "headers": {"x-echo": quote(SECRET), "set-cookie": "id=1", "authorization": "Bearer x"},
        "body": json.dumps({"auth": SECRET}),
        "json": {"auth": SECRET, SECRET: [TOKEN, 1]},
    }
    masked = secrets.mask_json(result)
    assert masked == {
        "status": 200,
        "headers": {"x-echo": "***", "set-cookie": "***", "authorization": "***"},
        "body": '{"auth": "***"}',
        "json": {"auth": "***", "***": ["***", 1]},
    }


def test_env_is_expanded_in_the_template_only_never_in_substituted_values(secrets: SecretValues) -> None:
    bindings = {"p": {"rows": [{"v": "{env:DD_SECRET}"}], "columns": [["v", "text"]]}}
    text = render_request_text(
        '{"a": "$p", "t": "{env:DD_TOKEN}"}', lambda t: render_raw(t, bindings), secrets
    )
    assert text == '{"a": "{env:DD_SECRET}", "t": "' + TOKEN + '"}'
    # A secret is joined in after substitution: a "$name" inside it is not a reference.
    fresh = SecretValues()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DD_DOLLAR", "x$p y")
        assert render_request_text("{env:DD_DOLLAR}$p", lambda t: render_raw(t, bindings), fresh) == (
            "x$p y{env:DD_SECRET}"
        )


def test_the_allow_list_limits_which_names_may_be_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DD_SECRET", SECRET)
    monkeypatch.setenv("DD_OTHER", "x")
    monkeypatch.setenv("DBT_DURABLE_ENV_ALLOW", "DD_SECRET, DD_NOT_SET")
    assert SecretValues().fill("{env:DD_SECRET}") == SECRET
    with pytest.raises(BindingError, match="DD_OTHER is not in DBT_DURABLE_ENV_ALLOW"):
        SecretValues().fill("{env:DD_OTHER}")
    with pytest.raises(BindingError, match="no environment variable DD_NOT_SET"):
        SecretValues().fill("{env:DD_NOT_SET}")
    monkeypatch.setenv("DBT_DURABLE_ENV_ALLOW", "")
    with pytest.raises(BindingError, match="DD_SECRET is not in DBT_DURABLE_ENV_ALLOW"):
        SecretValues().fill("{env:DD_SECRET}")


class Echo(BaseHTTPRequestHandler):
    """Answers with the request, echoed back in many encodings."""

    seen: list[dict[str, str]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        query = unquote(urlsplit(self.path).query)
        Echo.seen.append({"path": self.path, "body": body, "token": self.headers.get("X-Token", "")})
        doc = {
            "path": self.path,
            "query": query,
            "body": body,
            "headers": dict(self.headers),
            "quoted": [quote(query), quote_plus(query), quote(query, safe="")],
            "inner": json.dumps({"q": query}, ensure_ascii=False),
        }
        payload = (json.dumps(doc) + "\n" + json.dumps(doc, ensure_ascii=False)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("X-Echo-Path", self.path)
        self.send_header("X-Echo-Token", self.headers.get("X-Token", ""))
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Echo.seen = []
    monkeypatch.setenv("DBT_DURABLE_HTTP_ALLOW", "127.0.0.1")
    monkeypatch.setenv("DD_SECRET", SECRET)
    monkeypatch.setenv("DD_TOKEN", TOKEN)
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _state_dump(space: Space) -> str:
    rows = space.query(
        "SELECT coalesce((SELECT json_agg(r)::text FROM {state}.runs r), '') || "
        "coalesce((SELECT json_agg(n)::text FROM {state}.nodes n), '') || "
        "coalesce((SELECT json_agg(e)::text FROM {state}.events e), '')"
    )
    return str(rows[0][0])


def test_an_echoed_secret_is_stored_in_no_encoding(space: Space, server: str) -> None:
    flow = (
        f"http('{server}/s?k={{env:DD_SECRET}}', 'POST', '{{\"auth\": \"{{env:DD_SECRET}}\"}}', "
        "'{\"X-Token\": \"{env:DD_TOKEN}\"}') |=> 'r' ~> 'SELECT $r.status AS s'"
    )
    out = space.client().start(flow).outcome
    assert out is not None and out.status == "completed", out.error if out else None
    assert out.result["rows"] == [{"s": 200}]
    sent = Echo.seen[0]
    assert unquote(urlsplit(sent["path"]).query) == f"k={SECRET}" and SECRET in sent["body"]
    assert sent["token"] == TOKEN
    dump = _state_dump(space)
    assert "***" in dump and "{env:DD_SECRET}" in dump
    for form in _forms(SECRET) + _forms(TOKEN):
        assert form not in dump, form


def test_env_inside_a_substituted_value_is_never_expanded(space: Space, server: str) -> None:
    flow = f"'SELECT ''{{env:DD_SECRET}}'' AS v' |=> 'p' ~> http('{server}/s', 'POST', '$p')"
    out = space.client().start(flow).outcome
    assert out is not None and out.status == "completed", out.error if out else None
    assert Echo.seen[0]["body"] == "{env:DD_SECRET}"
