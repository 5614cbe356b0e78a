"""The dashboard in a real headless Chromium (Debian's, driven by Playwright through
``executable_path``): a run's graph updates live over server-sent events, a signal sent from
the page finishes the run, actions need the token, one feed serves every tab, the database
being unreachable is said plainly, and a role sees only its own runs. The screenshots go to
docs/img/, where docs/dashboard.md uses them."""

from __future__ import annotations

import secrets
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import conninfo, sql

from dbt_durable.config import Settings
from dbt_durable.views.model import Views
from tests.conftest import Space

pytest.importorskip("starlette", reason="the dashboard needs the ui extra: pip install '.[ui]'")
pytest.importorskip("uvicorn", reason="the dashboard needs the ui extra: pip install '.[ui]'")

from dbt_durable.ui.app import create_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
TOKEN = "test-token-" + secrets.token_hex(4)
FLOW = (
    "'SELECT pg_sleep(1.5) AS warmed_up' |=> 'w' ~> wait_for_signal('approve') "
    "~> 'SELECT pg_sleep(0.5)' ~> ('SELECT 42 AS answer' & 'SELECT $w.warmed_up IS NULL AS ok')"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """The dashboard app served by uvicorn in a thread."""

    def __init__(self, views: Views, token: str | None):
        import uvicorn

        self.app = create_app(views, token, interval_s=0.2)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", timeout_graceful_shutdown=1
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def hub(self) -> Any:
        return self.app.state.dashboard.hub

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install '.[ui-test]' (playwright)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


def run_in_background(space: Space, flow: str) -> tuple[str, threading.Thread]:
    client = space.client()
    started = client.start(flow, name="approval", wait=False)
    thread = threading.Thread(target=client.resume, args=(started.run_id,), daemon=True)
    thread.start()
    return started.run_id, thread


def in_thread(fn: Any, *args: Any, **kw: Any) -> Any:
    """``fn(*args)`` on a thread of its own: Playwright's sync API holds an event loop on this
    one, and the runner's API calls asyncio.run."""
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn(*args, **kw)))
    t.start()
    t.join(120)
    return out[0]


def node_class(page: Any, node_id: str) -> str:
    return str(page.get_attribute(f'g.node[data-node="{node_id}"]', "class"))


def test_run_graph_updates_live_and_a_signal_from_the_page_finishes_it(space: Space, browser: Any) -> None:
    IMG.mkdir(parents=True, exist_ok=True)
    with Server(Views(space.settings()), TOKEN) as srv:
        run_id, runner = run_in_background(space, FLOW)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{srv.url}/?token={TOKEN}")  # sets the token cookie, back to the runs list
        assert page.url.rstrip("/") == srv.url
        page.goto(f"{srv.url}/runs/{run_id}")
        assert "st-completed" not in node_class(page, "0.1")  # the wait is not reached yet
        # The first step finishes and the wait is reached: the page learns it from the feed.
        page.wait_for_function(
            "document.querySelector('g.node[data-node=\"0.1\"]').getAttribute('class').includes('st-waiting')",
            timeout=30_000,
        )
        assert "st-completed" in node_class(page, "0.0")
        assert page.inner_text("#run-status") == "running"
        page.screenshot(path=str(IMG / "dashboard-run-waiting.png"), full_page=True)
        page.fill("#signal-form input[name=name]", "approve")
        page.fill("#signal-form input[name=payload]", '{"approved_by": "ops"}')
        page.click("#send-signal")
        page.wait_for_selector("#flash")
        assert "signal 'approve' delivered" in page.inner_text("#flash")
        page.wait_for_function("document.body.dataset.status === 'completed'", timeout=30_000)
        assert page.inner_text("#run-status") == "completed"
        for node in ("0", "0.1", "0.3"):
            assert "st-completed" in node_class(page, node)
        page.screenshot(path=str(IMG / "dashboard-run-completed.png"), full_page=True)
        runner.join(30)
        page.goto(f"{srv.url}/")
        assert run_id[:8] in page.inner_text("#runs")
        page.screenshot(path=str(IMG / "dashboard-runs.png"), full_page=True)
        page.goto(f"{srv.url}/runs/{run_id}/nodes/0.3.1")
        assert "FALSE AS ok" in page.inner_text("#rendered-sql").upper() or "AS ok" in page.inner_text(
            "#rendered-sql"
        )
        assert "$w.warmed_up" in page.inner_text("#template")


def test_actions_need_the_token(space: Space, browser: Any) -> None:
    run_id = in_thread(space.client(park_after_s=0.2).start, "wait_for_signal('go')").run_id
    with Server(Views(space.settings()), TOKEN) as srv:
        anonymous = browser.new_context()
        page = anonymous.new_page()
        page.goto(f"{srv.url}/runs/{run_id}")
        assert page.query_selector("#actions") is None
        assert "actions need the token" in page.inner_text("#read-only")
        refused = anonymous.request.post(f"{srv.url}/runs/{run_id}/cancel", form={"reason": "x"})
        assert refused.status == 403
        wrong = anonymous.request.post(
            f"{srv.url}/runs/{run_id}/signal", form={"name": "go", "token": "nope"}
        )
        assert wrong.status == 403
        assert space.query("SELECT count(*) FROM {state}.signals") == [(0,)]
        allowed = anonymous.request.post(
            f"{srv.url}/runs/{run_id}/cancel",
            form={"reason": "from the test"},
            headers={"X-DBT-Durable-Token": TOKEN, "Accept": "application/json"},
        )
        assert allowed.status == 200 and allowed.json()["ok"]
        assert space.client().get_run(run_id)["status"] == "cancelled"
    with Server(Views(space.settings()), None) as srv:  # --read-only: no token opens actions
        ro = browser.new_page()
        ro.goto(f"{srv.url}/runs/{run_id}")
        assert "Read-only dashboard" in ro.inner_text("main")
        assert ro.request.post(f"{srv.url}/runs/{run_id}/cancel", form={}).status == 403


def test_failed_node_view_shows_sqlstate_and_screenshot(space: Space, browser: Any) -> None:
    flow = "'SELECT 1 AS one' |=> 'x' ~> 'SELECT 1/($x.one - 1) AS boom' with (retries=1, backoff='0s')"
    run_id = in_thread(space.client().start, flow).run_id
    with Server(Views(space.settings()), TOKEN) as srv:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{srv.url}/?token={TOKEN}")
        page.goto(f"{srv.url}/runs/{run_id}")
        failure = page.inner_text("#failure")
        assert "Failed at node 0.1" in failure and "SQLSTATE 22012" in failure
        assert page.query_selector("#resume") is not None
        page.goto(f"{srv.url}/runs/{run_id}/nodes/0.1")
        assert "SELECT 1/(1 - 1) AS boom" in page.inner_text("#rendered-sql")
        assert "SQLSTATE 22012" in page.inner_text("#executions")
        page.screenshot(path=str(IMG / "dashboard-node-failed.png"), full_page=True)
        # Resume from the page: the run goes back to the queue for a worker.
        page.goto(f"{srv.url}/runs/{run_id}")
        page.click("#resume")
        page.wait_for_selector("#flash")
        assert space.client().get_run(run_id)["status"] == "pending"


def test_one_feed_serves_every_tab(space: Space, browser: Any) -> None:
    run_id = in_thread(space.client(park_after_s=0.2).start, "wait_for_signal('go')").run_id
    with Server(Views(space.settings()), TOKEN) as srv:
        first = browser.new_page()
        first.goto(f"{srv.url}/runs/{run_id}")
        time.sleep(1.0)
        before = srv.hub.polls
        time.sleep(2.0)
        one_tab = srv.hub.polls - before
        tabs = [browser.new_page() for _ in range(4)]
        for tab in tabs:
            tab.goto(f"{srv.url}/runs/{run_id}")
        time.sleep(1.0)
        before = srv.hub.polls
        time.sleep(2.0)
        five_tabs = srv.hub.polls - before
        assert one_tab > 0
        assert five_tabs <= one_tab + 3, (one_tab, five_tabs)  # not five times as many


def test_unreachable_database_is_reported(browser: Any) -> None:
    views = Views(
        Settings(dsn="postgresql://nobody:hunter2@127.0.0.1:1/none?connect_timeout=2", schema="dbt_durable")
    )
    with Server(views, TOKEN) as srv:
        page = browser.new_page()
        response = page.goto(f"{srv.url}/")
        assert response is not None and response.status == 503
        text = page.inner_text("#db-error")
        assert "The database is unreachable" in text
        assert "hunter2" not in page.content()
        assert page.goto(f"{srv.url}/schedules").status == 503
        page.screenshot(path=str(IMG / "dashboard-db-unreachable.png"))


def test_role_sees_only_its_own_runs(space: Space) -> None:
    from starlette.testclient import TestClient

    role = f"dd_ui_{secrets.token_hex(3)}"
    mine = space.client().start("'SELECT 1'", name="owner-run").run_id
    with psycopg.connect(space.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(sql.SQL("SELECT {}.grant_usage(%s)").format(sql.Identifier(space.schema)), (role,))
    try:
        dsn = conninfo.make_conninfo(space.admin_dsn, user=role)
        theirs = Views(Settings(dsn=dsn, schema=space.schema))
        with TestClient(create_app(theirs, TOKEN)) as client:
            listing = client.get("/api/runs").json()
            assert mine not in {r["run_id"] for r in listing}
            assert client.get(f"/runs/{mine}").status_code == 404
    finally:
        with psycopg.connect(space.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_schedules_page_and_actions(space: Space) -> None:
    from starlette.testclient import TestClient

    client = space.client()
    client.schedule_add("nightly", "0 2 * * *", "UTC", {"kind": "flow", "flow": "'SELECT 1'"})
    with TestClient(create_app(Views(space.settings()), TOKEN)) as http:
        page = http.get("/schedules").text
        assert "nightly" in page and "0 2 * * *" in page
        headers = {"X-DBT-Durable-Token": TOKEN, "Accept": "application/json"}
        assert http.post("/schedules/nightly/trigger", headers=headers).json()["ok"]
        out = http.post(
            "/schedules/nightly/backfill",
            data={"start": "2026-01-01T00:00", "end": "2026-01-03T23:00"},
            headers=headers,
        ).json()
        assert out["ok"] and "backfilled 3 slot(s)" in out["message"], out
        again = http.post(
            "/schedules/nightly/backfill",
            data={"start": "2026-01-01T00:00", "end": "2026-01-03T23:00"},
            headers=headers,
        ).json()
        assert "backfilled 0 slot(s) of 3" in again["message"]  # a slot never runs twice
        assert http.post("/schedules/nightly/pause", headers=headers).json()["ok"]
        assert client.schedules()[0]["paused"] is True
        assert http.post("/schedules/nightly/trigger").status_code == 403
        assert "dbt_durable_runs" in http.get("/metrics").text
        assert "Workers" in http.get("/workers").text
