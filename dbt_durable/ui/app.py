"""``dbt-durable ui``: a dashboard on localhost (Starlette, served by uvicorn).

Rules it keeps:

* It binds 127.0.0.1 unless told otherwise.
* Actions (signal, cancel, resume, restart from a node, a schedule's trigger-now, pause and
  backfill) need the token: the ``X-DBT-Durable-Token`` header, a ``token`` form field, or the
  cookie set by opening ``/?token=...`` (HttpOnly, SameSite=Strict, so another site cannot
  post with it). Without the token every page works and every action answers 403.
* It shows what the connected role may see (the reads go through row-level security) and never
  a password or a secret: the DSN is masked, ``{env:NAME}`` references are never expanded and
  values that look like passwords are masked.
* When the database is unreachable, pages say so (503) and the live feed reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets as secret_tokens
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import urlencode

import psycopg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from dbt_durable.errors import ConnectionFailed, DurableError, RunNotFound
from dbt_durable.graph.explain import _counts, preorder, svg
from dbt_durable.store.connect import mask_dsn
from dbt_durable.ui.hub import Hub, snapshot
from dbt_durable.views.model import Views, failure_report, mask_secrets
from dbt_durable.views.render import duration, node_rows, run_header, status_note, when

TOKEN_HEADER = "x-dbt-durable-token"
TOKEN_COOKIE = "dbt_durable_token"
STATUSES = ("pending", "running", "waiting", "completed", "failed", "cancelled", "quarantined")

CSS = """
body{font-family:Helvetica,Arial,sans-serif;margin:0;color:#212121;background:#fafafa}
header{background:#263238;color:#fff;padding:10px 20px;display:flex;gap:20px;align-items:center}
header a{color:#fff;text-decoration:none;font-weight:bold} header .conn{margin-left:auto;font-size:12px;opacity:.8}
main{padding:16px 20px} table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid #e0e0e0;padding:5px 8px;text-align:left;font-size:13px;vertical-align:top}
th{background:#eceff1} .badge{padding:2px 7px;border-radius:10px;font-size:12px;background:#eee}
.b-completed{background:#e8f5e9;color:#1b5e20}.b-running{background:#e3f2fd;color:#0d47a1}
.b-waiting{background:#fff8e1;color:#6d4c00}.b-failed{background:#ffebee;color:#b71c1c}
.b-cancelled,.b-skipped{background:#eceff1;color:#37474f}.b-quarantined{background:#f3e5f5;color:#4a148c}
.banner{padding:8px 12px;margin-bottom:12px;border-radius:4px}.ro{background:#fff3e0}.err{background:#ffebee;color:#b71c1c}
.ok{background:#e8f5e9}.errtext{color:#b71c1c}.actions form{display:inline-block;margin:0 12px 8px 0}
pre{background:#f5f5f5;padding:8px;overflow:auto;font-size:12px;max-height:400px}
.graph{background:#fff;border:1px solid #e0e0e0;overflow:auto;margin:10px 0}
input,select,button{font-size:13px} .muted{color:#757575;font-size:12px}
"""

LIVE_JS = """
const runId = document.body.dataset.run;
const src = new EventSource('/runs/' + runId + '/events');
src.onmessage = (e) => {
  const m = JSON.parse(e.data);
  const banner = document.getElementById('live-error');
  if (m.error) { banner.textContent = m.error; banner.style.display = 'block'; return; }
  banner.style.display = 'none';
  document.getElementById('run-status').textContent = m.status;
  document.getElementById('run-status').className = 'badge b-' + m.status;
  document.getElementById('run-header').textContent = m.header;
  document.getElementById('run-note').textContent = m.note;
  for (const [id, n] of Object.entries(m.nodes)) {
    const g = document.querySelector('g.node[data-node="' + id + '"]');
    if (g) {
      g.setAttribute('class', 'node st-' + n.state);
      const t = g.querySelector('text.state');
      if (t) t.textContent = n.state + (n.counts ? ' ' + n.counts : '');
    }
    const row = document.querySelector('tr[data-node="' + id + '"]');
    if (row) {
      row.querySelector('.state').innerHTML = '<span class="badge b-' + n.state + '">' + n.state + '</span>';
      row.querySelector('.counts').textContent = n.counts;
      row.querySelector('.dur').textContent = n.duration;
      row.querySelector('.errtext').textContent = n.error || '';
    }
  }
  document.body.dataset.status = m.status;
};
"""


def _badge(state: str | None) -> str:
    state = state or "pending"
    return f'<span class="badge b-{escape(state)}">{escape(state)}</span>'


class Dashboard:
    """The pages and actions, over one :class:`Views` and one :class:`Hub`."""

    def __init__(self, views: Views, token: str | None, interval_s: float = 0.5):
        self.views = views
        self.token = token
        self.hub = Hub(views, interval_s)
        self.where = mask_dsn(views.settings.dsn)

    # -- plumbing -------------------------------------------------------------------------
    def authorized(self, request: Request, form: Any = None) -> bool:
        if self.token is None:
            return False
        given = request.headers.get(TOKEN_HEADER) or request.cookies.get(TOKEN_COOKIE)
        if not given and form is not None:
            given = form.get("token")
        return bool(given) and secret_tokens.compare_digest(str(given), self.token)

    def page(
        self, request: Request, title: str, body: str, status_code: int = 200, run_id: str = ""
    ) -> HTMLResponse:
        if self.token is None:
            mode = '<div class="banner ro">Read-only dashboard (started with --read-only).</div>'
        elif self.authorized(request):
            mode = ""
        else:
            mode = (
                '<div class="banner ro" id="read-only">Read-only: actions need the token. Open this '
                "page with <code>?token=…</code> (printed by <code>dbt-durable ui</code>).</div>"
            )
        nav = "".join(
            f'<a href="{href}">{label}</a>'
            for href, label in (
                ("/", "Runs"),
                ("/schedules", "Schedules"),
                ("/workers", "Workers"),
                ("/metrics", "Metrics"),
            )
        )
        script = f"<script>{LIVE_JS}</script>" if run_id else ""
        html = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)} · dbt-durable</title>"
            f"<style>{CSS}</style></head><body data-run='{escape(run_id)}'>"
            f"<header><span>dbt-durable</span>{nav}<span class='conn'>{escape(self.views.settings.schema)} on "
            f"{escape(self.where)}</span></header><main>{mode}{body}</main>{script}</body></html>"
        )
        return HTMLResponse(html, status_code=status_code)

    def unreachable(self, request: Request, exc: BaseException) -> HTMLResponse:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return self.page(
            request,
            "Database unreachable",
            f'<div class="banner err" id="db-error"><b>The database is unreachable.</b> '
            f"{escape(mask_dsn(text))}<br>The dashboard keeps running; reload when the database is back.</div>",
            503,
        )

    def guarded(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except (psycopg.OperationalError, ConnectionFailed, OSError) as exc:
                if request.url.path.startswith("/api/") or request.url.path == "/metrics":
                    return JSONResponse({"error": "database unreachable"}, status_code=503)
                return self.unreachable(request, exc)
            except RunNotFound as exc:
                return self.page(
                    request, "Not found", f'<div class="banner err">{escape(str(exc))}</div>', 404
                )

        return wrapped

    async def action(self, request: Request, do: Callable[[Any], Any], back: str) -> Response:
        form = await request.form()
        if self.token is None:
            return PlainTextResponse("the dashboard is read-only", status_code=403)
        if not self.authorized(request, form):
            return PlainTextResponse("actions need the dashboard token", status_code=403)
        origin = request.headers.get("origin")
        if origin and origin.split("://", 1)[-1] != request.headers.get("host", ""):
            return PlainTextResponse("cross-origin action refused", status_code=403)
        try:
            message = await asyncio.to_thread(do, form)
            ok = True
        except (DurableError, psycopg.errors.RaiseException, psycopg.errors.InsufficientPrivilege) as exc:
            message, ok = str(getattr(exc, "diag", None) and exc.diag.message_primary or exc), False  # type: ignore[union-attr]
        if request.headers.get("accept", "").startswith("application/json"):
            return JSONResponse({"ok": ok, "message": message}, status_code=200 if ok else 400)
        self.hub._wake.set()
        return RedirectResponse(f"{back}?{urlencode({'ok' if ok else 'error': message})}", status_code=303)

    # -- pages ----------------------------------------------------------------------------
    async def runs(self, request: Request) -> Response:
        if "token" in request.query_params:
            return self.set_token(request)
        p = request.query_params
        status = p.get("status") or None
        rows = await asyncio.to_thread(
            self.views.list_runs,
            int(p.get("limit", 50)),
            status,
            p.get("flow") or None,
            p.get("model") or None,
            p.get("q") or None,
        )
        options = "".join(
            f"<option {'selected' if s == status else ''}>{s}</option>" for s in ("", *STATUSES)
        )
        body = [
            "<h2>Runs</h2><form method='get' class='filters'>"
            f"<select name='status'>{options}</select> "
            f"<input name='flow' placeholder='flow (% wildcards)' value='{escape(p.get('flow', ''))}'> "
            f"<input name='model' placeholder='dbt model' value='{escape(p.get('model', ''))}'> "
            f"<input name='q' placeholder='search id, flow, key, error' value='{escape(p.get('q', ''))}'> "
            "<button>Filter</button></form><br>",
            "<table id='runs'><tr><th>run</th><th>status</th><th>flow</th><th>key / target</th><th>started</th>"
            "<th>duration</th><th>progress</th><th>note</th></tr>",
        ]
        from dbt_durable.views.render import _note, _target

        for r in rows:
            rid = str(r["run_id"])
            body.append(
                f"<tr data-run='{rid}'><td><a href='/runs/{rid}'>{rid[:8]}</a></td><td>{_badge(r['status'])}</td>"
                f"<td>{escape(r['flow_name'])}</td><td>{escape(_target(r))}</td>"
                f"<td>{when(r['started_at'] or r['created_at'])}</td><td>{duration(r['duration_s'])}</td>"
                f"<td>{escape(r['progress'].text())}</td><td>{escape(mask_secrets(_note(r)))}</td></tr>"
            )
        body.append("</table>")
        if not rows:
            body.append("<p class='muted'>No runs visible to this role.</p>")
        return self.page(request, "Runs", "".join(body))

    def set_token(self, request: Request) -> Response:
        given = request.query_params.get("token", "")
        response = RedirectResponse("/", status_code=303)
        if self.token is not None and secret_tokens.compare_digest(given, self.token):
            response.set_cookie(TOKEN_COOKIE, given, httponly=True, samesite="strict")
        return response

    def _flash(self, request: Request) -> str:
        p = request.query_params
        if p.get("ok"):
            return f'<div class="banner ok" id="flash">{escape(p["ok"])}</div>'
        if p.get("error"):
            return f'<div class="banner err" id="flash">{escape(p["error"])}</div>'
        return ""

    async def run_page(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        view = await asyncio.to_thread(self.views.run_view, run_id)
        rid = view.run_id
        run = view.run
        can = self.authorized(request)
        parts = [
            self._flash(request),
            '<div class="banner err" id="live-error" style="display:none"></div>',
            f"<h2>Run {rid[:8]} {_badge(view.status).replace('<span', '<span id=run-status', 1)}</h2>",
            f"<div id='run-header'>{escape(run_header(view))}</div>",
            f"<p id='run-note' class='muted'>{escape(status_note(view) or '')}</p>",
        ]
        if view.status in ("failed", "quarantined"):
            f = failure_report(view)
            parts.append(
                "<div class='banner err' id='failure'><b>Failed at node "
                f"<a href='/runs/{rid}/nodes/{escape(str(f['node']).split('#')[0])}'>{escape(str(f['node']))}</a></b>"
                f" ({escape(str(f['kind']))}, flow position {escape(str(f['source']))}, {f['attempts']} attempt(s))<br>"
                f"{escape(f['message'] or '')}"
                + (f" <b>SQLSTATE {escape(f['sqlstate'])}</b>" if f.get("sqlstate") else "")
                + (f"<br>DETAIL: {escape(f['detail'])}" if f.get("detail") else "")
                + (f"<br>HINT: {escape(f['hint'])}" if f.get("hint") else "")
                + f"<br><code>{escape(f['resume_command'])}</code></div>"
            )
        if can:
            parts.append(self._actions(view))
        if view.flow is not None:
            parts.append(f"<div class='graph' id='graph'>{svg(view.flow, view.states)}</div>")
        parts.append(
            "<h3>Nodes</h3><table id='nodes'><tr><th>node</th><th>what</th><th>state</th><th>runs</th>"
            "<th>duration</th><th>error</th></tr>"
        )
        for depth, node_id, text, facts in node_rows(view):
            st = view.states.get(node_id)
            counts = ""
            if st is not None:
                counts = _counts(st, with_time=False)
            parts.append(
                f"<tr data-node='{escape(node_id)}'><td style='padding-left:{8 + depth * 14}px'>"
                f"<a href='/runs/{rid}/nodes/{escape(node_id)}'>{escape(node_id)}</a></td><td>{escape(text)}</td>"
                f"<td class='state'>{_badge(facts['state'])}</td><td class='counts'>{escape(counts)}</td>"
                f"<td class='dur'>{escape(facts.get('duration', ''))}</td>"
                f"<td class='errtext'>{escape(mask_secrets(facts.get('error') or ''))}</td></tr>"
            )
        parts.append("</table>")
        events = await asyncio.to_thread(self.views.events, rid, 30)
        parts.append(
            "<h3>Events</h3><table id='events'><tr><th>at</th><th>event</th><th>node</th><th>detail</th></tr>"
        )
        for e in events:
            parts.append(
                f"<tr><td>{when(e['at'])}</td><td>{escape(e['kind'])}</td><td>{escape(e['exec_key'] or '')}</td>"
                f"<td>{escape(mask_secrets(json.dumps(e['detail'], default=str)[:300]))}</td></tr>"
            )
        parts.append("</table>")
        sigs = await asyncio.to_thread(self.views.signals, rid)
        if sigs:
            parts.append(
                "<h3>Signals</h3><table id='signals'><tr><th>#</th><th>name</th><th>sent</th><th>by</th><th>consumed by</th></tr>"
            )
            for g in sigs:
                parts.append(
                    f"<tr><td>{g['signal_id']}</td><td>{escape(g['name'])}</td><td>{when(g['sent_at'])}</td>"
                    f"<td>{escape(g['sent_by'])}</td><td>{escape(g['consumed_by'] or 'buffered')}</td></tr>"
                )
            parts.append("</table>")
        vars_ = run.get("vars") or {}
        if vars_:
            shown = {
                k: ("***" if any(w in k.lower() for w in ("pass", "secret", "token", "key")) else v)
                for k, v in vars_.items()
            }
            parts.append(f"<h3>Vars</h3><pre>{escape(mask_secrets(json.dumps(shown, indent=2)))}</pre>")
        return self.page(request, f"Run {rid[:8]}", "".join(parts), run_id=rid)

    def _actions(self, view: Any) -> str:
        rid = view.run_id
        out = ["<div class='actions' id='actions'><h3>Actions</h3>"]
        waiting_for = view.run.get("waiting_for") or ""
        if not view.finished:
            out.append(
                f"<form method='post' action='/runs/{rid}/signal' id='signal-form'>"
                f"<input name='name' placeholder='signal name' value='{escape(waiting_for)}'> "
                "<input name='payload' placeholder='JSON payload (optional)'> <button id='send-signal'>Send signal</button></form>"
                f"<form method='post' action='/runs/{rid}/cancel'><input name='reason' placeholder='reason'>"
                " <button id='cancel'>Cancel</button></form>"
            )
        if view.status in ("failed", "quarantined"):
            out.append(
                f"<form method='post' action='/runs/{rid}/resume'><button id='resume'>Resume (a worker retries the failed node)</button></form>"
            )
        if view.flow is not None and (view.finished or view.status == "waiting"):
            opts = "".join(f"<option>{escape(n)}</option>" for n, _ in preorder(view.flow))
            out.append(
                f"<form method='post' action='/runs/{rid}/restart'>Restart from <select name='node'>{opts}</select> "
                "<button id='restart'>Restart</button></form>"
            )
        out.append("</div>")
        return "".join(out)

    async def node_page(self, request: Request) -> Response:
        run_id, node_id = request.path_params["run_id"], request.path_params["node_id"]
        d = await asyncio.to_thread(self.views.node_detail, run_id, node_id)
        rid = d["run_id"]
        parts = [
            f"<p><a href='/runs/{rid}'>← run {rid[:8]}</a></p><h2>Node {escape(node_id)} "
            f"<span class='muted'>{escape(str(d['kind']))} · flow position {escape(str(d['source']))}</span></h2>",
            f"<p>{escape(d['label'])}</p>",
        ]
        if d["template"]:
            parts.append(f"<h3>SQL as written</h3><pre id='template'>{escape(d['template'])}</pre>")
        if d["rendered_sql"]:
            parts.append(
                "<h3>SQL rendered with the run's values</h3>"
                f"<pre id='rendered-sql'>{escape(d['rendered_sql'])}</pre><p class='muted'>{{env:…}} secrets are never expanded here.</p>"
            )
        parts.append(
            "<h3>Executions</h3><table id='executions'><tr><th>exec</th><th>state</th><th>attempts</th>"
            "<th>started</th><th>duration</th><th>error</th></tr>"
        )
        for e in d["executions"]:
            ep = e["error_parts"]
            err = ""
            if ep["message"]:
                err = escape(mask_secrets(ep["message"]))
                if ep["sqlstate"]:
                    err += f" <b>SQLSTATE {escape(ep['sqlstate'])}</b>"
                if ep["detail"]:
                    err += f"<br>DETAIL: {escape(mask_secrets(ep['detail']))}"
                if ep["hint"]:
                    err += f"<br>HINT: {escape(mask_secrets(ep['hint']))}"
            parts.append(
                f"<tr><td>{escape(e['exec_key'])}</td><td>{_badge(e['status'])}</td><td>{e['attempts']}</td>"
                f"<td>{when(e['started_at'])}</td><td>{duration(e['seconds'])}</td><td class='errtext'>{err}</td></tr>"
            )
        parts.append("</table>")
        latest = next((e for e in d["executions"] if e["result"] is not None), None)
        if latest is not None:
            result = latest["result"]
            if isinstance(result, dict) and isinstance(result.get("rows"), list):
                result = {**result, "rows": result["rows"][:20]}
            parts.append(
                f"<h3>Result preview ({escape(latest['exec_key'])})</h3>"
                f"<pre id='result'>{escape(mask_secrets(json.dumps(result, indent=2, default=str)[:5000]))}</pre>"
            )
        parts.append("<h3>Events</h3><table><tr><th>at</th><th>event</th><th>exec</th><th>detail</th></tr>")
        for e in d["events"]:
            parts.append(
                f"<tr><td>{when(e['at'])}</td><td>{escape(e['kind'])}</td><td>{escape(e['exec_key'] or '')}</td>"
                f"<td>{escape(mask_secrets(json.dumps(e['detail'], default=str)[:300]))}</td></tr>"
            )
        parts.append("</table>")
        return self.page(request, f"Node {node_id}", "".join(parts))

    async def schedules_page(self, request: Request) -> Response:
        rows = await asyncio.to_thread(self.views.schedules)
        can = self.authorized(request)
        parts = [
            self._flash(request),
            "<h2>Schedules</h2><table id='schedules'><tr><th>name</th><th>cron</th><th>tz</th>"
            "<th>target</th><th>paused</th><th>last fired slot</th><th>next slots (UTC)</th><th>recent runs</th>"
            + ("<th>actions</th>" if can else "")
            + "</tr>",
        ]
        for r in rows:
            target = r["target"].get("flow") or "dbt build " + " ".join(r["target"].get("args", []))
            recent = " ".join(
                f"<a href='/runs/{x['run_id']}'>{_badge(x['status'])}</a>" for x in r["recent_runs"]
            )
            name = escape(r["name"])
            acts = ""
            if can:
                acts = (
                    f"<td><form method='post' action='/schedules/{name}/trigger'><button>Trigger now</button></form>"
                    f"<form method='post' action='/schedules/{name}/{'resume' if r['paused'] else 'pause'}'>"
                    f"<button>{'Resume' if r['paused'] else 'Pause'}</button></form>"
                    f"<form method='post' action='/schedules/{name}/backfill'>from <input name='start' type='datetime-local'> "
                    "to <input name='end' type='datetime-local'> <button>Backfill</button></form></td>"
                )
            parts.append(
                f"<tr><td>{name}</td><td><code>{escape(r['cron'])}</code></td><td>{escape(r['tz'])}</td>"
                f"<td>{escape(mask_secrets(target)[:120])}</td><td>{'yes' if r['paused'] else 'no'}</td>"
                f"<td>{when(r['last_fired_slot'])}</td><td>{'<br>'.join(when(s) for s in r['next_slots'])}</td>"
                f"<td>{recent}</td>{acts}</tr>"
                + (
                    f"<tr><td colspan=8 class='errtext'>{escape(r['last_error'])}</td></tr>"
                    if r["last_error"]
                    else ""
                )
            )
        parts.append("</table>")
        if not rows:
            parts.append("<p class='muted'>No schedules visible to this role.</p>")
        return self.page(request, "Schedules", "".join(parts))

    async def workers_page(self, request: Request) -> Response:
        rows = await asyncio.to_thread(self.views.workers)
        parts = [
            "<h2>Workers</h2><table id='workers'><tr><th>worker</th><th>login</th><th>host</th><th>pid</th>"
            "<th>started</th><th>last heartbeat</th><th>runs of its login running</th></tr>"
        ]
        for w in rows:
            age = w["heartbeat_age_s"] or 0
            live = (
                _badge("running" if age < 30 else "failed")
                .replace(">running<", ">alive<")
                .replace(">failed<", ">stale<")
            )
            runs = " ".join(f"<a href='/runs/{r}'>{r[:8]}</a>" for r in w["running_runs"])
            parts.append(
                f"<tr><td>{escape(w['worker_id'])}</td><td>{escape(w['login'] or '')}</td><td>{escape(w['hostname'])}</td>"
                f"<td>{w['pid']}</td><td>{when(w['started_at'])}</td><td>{live} {age:.0f}s ago</td><td>{runs}</td></tr>"
            )
        parts.append("</table>")
        if not rows:
            parts.append(
                "<p class='muted'>No worker has a heartbeat (start one: <code>dbt-durable worker</code>).</p>"
            )
        return self.page(request, "Workers", "".join(parts))

    async def metrics(self, request: Request) -> Response:
        from dbt_durable.views.metrics import prometheus_text

        text = await asyncio.to_thread(prometheus_text, self.views)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def api_runs(self, request: Request) -> Response:
        p = request.query_params
        rows = await asyncio.to_thread(
            self.views.list_runs,
            int(p.get("limit", 50)),
            p.get("status") or None,
            p.get("flow") or None,
            p.get("model") or None,
            p.get("q") or None,
        )
        for r in rows:
            r["progress"] = r["progress"].__dict__
        return JSONResponse(json.loads(json.dumps(rows, default=str)))

    async def api_run(self, request: Request) -> Response:
        view = await asyncio.to_thread(self.views.run_view, request.path_params["run_id"])
        data = view.to_json()
        data["run"].pop("flow_text", None)
        return JSONResponse(json.loads(json.dumps(data, default=str)))

    async def events(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        queue = await self.hub.subscribe(run_id)

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 1000\n\n"
                while True:
                    try:
                        message = await asyncio.wait_for(queue.get(), 15)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    yield f"data: {json.dumps(message, default=str)}\n\n"
            finally:
                self.hub.unsubscribe(run_id, queue)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    # -- actions --------------------------------------------------------------------------
    async def act_signal(self, request: Request) -> Response:
        rid = request.path_params["run_id"]

        def do(form: Any) -> str:
            payload = None
            if form.get("payload"):
                try:
                    payload = json.loads(str(form["payload"]))
                except ValueError as exc:
                    raise DurableError(f"the payload must be JSON: {exc}") from None
            name = str(form.get("name") or "").strip()
            if not name:
                raise DurableError("a signal needs a name")
            out = self.views.signal(rid, name, payload, settle_s=0)
            return f"signal {name!r} delivered to run {rid[:8]}" + (
                "; the run was waiting for it" if out["run_waiting_for_it"] else "; buffered"
            )

        return await self.action(request, do, f"/runs/{rid}")

    async def act_cancel(self, request: Request) -> Response:
        rid = request.path_params["run_id"]

        def do(form: Any) -> str:
            out = self.views.cancel(rid, str(form.get("reason") or "cancelled from the dashboard"))
            if not out["changed"]:
                raise DurableError(f"nothing to cancel: the run is already {out['outcome']}")
            return f"run {rid[:8]}: {out['outcome']}"

        return await self.action(request, do, f"/runs/{rid}")

    async def act_resume(self, request: Request) -> Response:
        rid = request.path_params["run_id"]

        def do(form: Any) -> str:
            state = self.views.requeue(rid)
            if state != "pending":
                raise DurableError(f"only a failed or quarantined run is resumed; this one is {state}")
            return f"run {rid[:8]} queued: a worker resumes it at its failed node"

        return await self.action(request, do, f"/runs/{rid}")

    async def act_restart(self, request: Request) -> Response:
        rid = request.path_params["run_id"]

        def do(form: Any) -> str:
            out = self.views.restart_from(rid, str(form.get("node") or ""))
            return f"run {rid[:8]} queued to restart from node {out['from_node']} ({out['nodes']} node(s) run again)"

        return await self.action(request, do, f"/runs/{rid}")

    async def act_schedule(self, request: Request) -> Response:
        name, verb = request.path_params["name"], request.path_params["verb"]

        def do(form: Any) -> str:
            if verb in ("pause", "resume"):
                self.views.schedule_pause(name, verb == "pause")
                return f"schedule {name} {'paused' if verb == 'pause' else 'resumed'}"
            if verb == "trigger":
                out = self.views.schedule_fire(name)
                return f"schedule {name} triggered: run {out[0]['run_id'][:8]}"
            if verb == "backfill":
                try:
                    start = datetime.fromisoformat(str(form.get("start"))).replace(tzinfo=UTC)
                    end = datetime.fromisoformat(str(form.get("end"))).replace(tzinfo=UTC)
                except ValueError:
                    raise DurableError("backfill needs a start and an end time") from None
                slots = self.views.backfill_slots(name, start, end)
                out = self.views.schedule_fire(name, slots)
                made = sum(1 for o in out if o["created"])
                return f"schedule {name}: backfilled {made} slot(s) of {len(out)} in range (others existed)"
            raise DurableError(f"unknown schedule action {verb!r}")

        return await self.action(request, do, "/schedules")


def create_app(views: Views, token: str | None, interval_s: float = 0.5) -> Starlette:
    """The dashboard application (``token`` None: read-only)."""
    d = Dashboard(views, token, interval_s)
    g = d.guarded

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(d.hub.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            d.hub.close()

    app = Starlette(
        routes=[
            Route("/", g(d.runs)),
            Route("/runs/{run_id}", g(d.run_page)),
            Route("/runs/{run_id}/events", d.events),
            Route("/runs/{run_id}/nodes/{node_id}", g(d.node_page)),
            Route("/runs/{run_id}/signal", g(d.act_signal), methods=["POST"]),
            Route("/runs/{run_id}/cancel", g(d.act_cancel), methods=["POST"]),
            Route("/runs/{run_id}/resume", g(d.act_resume), methods=["POST"]),
            Route("/runs/{run_id}/restart", g(d.act_restart), methods=["POST"]),
            Route("/schedules", g(d.schedules_page)),
            Route("/schedules/{name}/{verb}", g(d.act_schedule), methods=["POST"]),
            Route("/workers", g(d.workers_page)),
            Route("/metrics", g(d.metrics)),
            Route("/api/runs", g(d.api_runs)),
            Route("/api/runs/{run_id}", g(d.api_run)),
        ],
        lifespan=lifespan,
    )
    app.state.dashboard = d
    return app


def serve(views: Views, host: str = "127.0.0.1", port: int = 8765, token: str | None = None) -> None:
    """Run the dashboard until interrupted."""
    import uvicorn

    uvicorn.run(create_app(views, token), host=host, port=port, log_level="warning")


__all__ = ["create_app", "serve", "snapshot"]
