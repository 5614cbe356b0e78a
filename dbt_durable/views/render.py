"""Terminal rendering of the views: rich tables and trees on a terminal, plain aligned text
otherwise (a pipe, a file, CI logs), so output stays greppable."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TextIO

from dbt_durable.flow import ast as A
from dbt_durable.graph.explain import STATUS_MARK, preorder
from dbt_durable.views.model import RunView, Views, failure_report

STYLE = {
    "completed": "green",
    "running": "blue",
    "waiting": "yellow",
    "failed": "bold red",
    "cancelled": "dim",
    "quarantined": "magenta",
    "pending": "",
    "skipped": "dim",
}


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


def _console(stream: TextIO | None = None) -> Any:
    from rich.console import Console

    return Console(file=stream or sys.stdout, highlight=False)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S") if at else ""


def table(title: str, columns: list[str], rows: list[list[Any]], stream: TextIO | None = None) -> None:
    """A table: rich on a terminal, plain aligned columns otherwise."""
    stream = stream or sys.stdout
    if is_terminal(stream):
        from rich.table import Table

        t = Table(title=title, title_justify="left")
        for col in columns:
            t.add_column(col, overflow="fold")
        for row in rows:
            t.add_row(*[str(v) for v in row])
        _console(stream).print(t)
        return
    cells = [columns, *[[str(v).replace("\n", " ") for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    if title:
        print(title, file=stream)
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=stream)


def runs_table(rows: list[dict[str, Any]], stream: TextIO | None = None) -> None:
    """The runs list of ``dbt-durable status``."""
    table(
        f"{len(rows)} run(s), newest first",
        ["run_id", "status", "flow", "target/key", "started", "duration", "progress", "note"],
        [
            [
                r["run_id"],
                r["status"],
                r["flow_name"],
                _target(r),
                when(r["started_at"] or r["created_at"]),
                duration(r["duration_s"]),
                r["progress"].text(),
                _note(r),
            ]
            for r in rows
        ],
        stream,
    )


def _target(r: dict[str, Any]) -> str:
    if r.get("kind") == "dbt_build":
        return "dbt build " + " ".join((r.get("dbt_args") or {}).get("args", []))
    return str(r.get("run_key") or "")


def _note(r: dict[str, Any]) -> str:
    status = r["status"]
    if status == "waiting":
        if r.get("waiting_for"):
            return f"waiting for signal {r['waiting_for']!r}"
        return f"until {when(r.get('wake_at'))}" if r.get("wake_at") else ""
    if status in ("failed", "quarantined"):
        first = (r.get("error") or "").splitlines()[0:1]
        return (
            f"at {r['failed_node']}: {first[0][:80]}"
            if first and r.get("failed_node")
            else (first or [""])[0][:80]
        )
    if r.get("cancel_requested") and status not in ("cancelled",):
        return "cancelling"
    return ""


def run_header(view: RunView) -> str:
    run = view.run
    started = run["started_at"] or run["created_at"]
    from dbt_durable.views.model import seconds_between

    parts = [
        f"run {view.run_id} ({run['flow_name']}{', key ' + run['run_key'] if run.get('run_key') else ''})",
        f"status {view.status}",
        f"progress {view.progress.text()}",
        f"started {when(started)}",
        f"duration {duration(seconds_between(started, run['finished_at']))}",
    ]
    return " · ".join(parts)


def status_note(view: RunView) -> str | None:
    """One line on what the run is doing: waiting for what, cancelling, or finished."""
    run = view.run
    if view.status == "waiting":
        if run.get("waiting_for"):
            return (
                f"waiting for signal {run['waiting_for']!r} "
                f"(send it: dbt-durable signal {view.run_id} {run['waiting_for']})"
            )
        if run.get("wake_at"):
            return f"waiting until {when(run['wake_at'])} UTC ({run.get('error') or 'a durable timer'})"
        return f"waiting: {run.get('error') or ''}"
    if run.get("cancel_requested") and view.status not in ("cancelled",) and not view.finished:
        return f"cancelling: {run['cancel_requested']}"
    if view.status == "cancelled":
        return f"cancelled: {run.get('cancel_requested') or run.get('error') or ''}"
    return None


def node_rows(view: RunView) -> list[tuple[int, str, str, dict[str, Any]]]:
    """(depth, node id, text, facts) for each node of the run's graph, in order."""
    out = []
    if view.flow is None:
        for n in sorted(view.dbt_nodes, key=lambda n: str(n["started_at"] or "")):
            out.append((0, n["node_id"], "dbt node", {"state": n["last_status"], "error": n["last_error"]}))
        return out
    for node_id, depth in preorder(view.flow):
        st = view.states[node_id]
        node = view.flow.node(node_id)
        label = view.flow.label(node_id)
        kind = A.kind_of(node)
        text = f"as {label}" if isinstance(node, A.Bind) else (kind if label == kind else f"{kind}  {label}")
        facts: dict[str, Any] = {"state": st.state}
        if st.iterations:
            facts["iterations"] = st.iterations
        elif st.executions > 1:
            facts["executions"] = st.executions
        if not view.flow.children(node_id):
            if st.attempts > 1:
                facts["attempt"] = st.attempts
            if st.seconds is not None:
                facts["duration"] = duration(st.seconds)
            if st.error:
                facts["error"] = st.error.splitlines()[0][:160]
        out.append((depth, node_id, text, facts))
    return out


def _facts_text(facts: dict[str, Any]) -> str:
    bits = []
    if "iterations" in facts:
        bits.append(f"×{facts['iterations']} iterations")
    if "executions" in facts:
        bits.append(f"×{facts['executions']}")
    if "attempt" in facts:
        bits.append(f"attempt {facts['attempt']}")
    if "duration" in facts:
        bits.append(facts["duration"])
    return ", ".join(bits)


def tree_renderable(view: RunView) -> Any:
    """A rich renderable: header, the node tree, the failure."""
    from rich.console import Group
    from rich.text import Text
    from rich.tree import Tree

    root = Tree(Text(run_header(view), style="bold"))
    stack: list[tuple[int, Any]] = [(-1, root)]
    for depth, node_id, text, facts in node_rows(view):
        state = facts["state"] or "pending"
        line = Text()
        line.append(f"{STATUS_MARK.get(state, ' ')} {state:<9} ", style=STYLE.get(state, ""))
        line.append(f"{node_id:<10} ", style="dim")
        line.append(text)
        extra = _facts_text(facts)
        if extra:
            line.append(f"  [{extra}]", style="cyan")
        if facts.get("error"):
            line.append(f"  {facts['error']}", style="red")
        while stack[-1][0] >= depth:
            stack.pop()
        branch = stack[-1][1].add(line)
        stack.append((depth, branch))
    parts: list[Any] = [root]
    note = status_note(view)
    if note:
        parts.append(Text(note, style="yellow"))
    if view.status in ("failed", "quarantined"):
        parts.append(Text("\n".join(failure_lines(view)), style="red"))
    return Group(*parts)


def plain_tree(view: RunView) -> list[str]:
    lines = [run_header(view)]
    for depth, node_id, text, facts in node_rows(view):
        state = facts["state"] or "pending"
        extra = _facts_text(facts)
        line = f"{STATUS_MARK.get(state, ' ')} {state:<9} {'  ' * depth}{node_id:<10} {text}"
        if extra:
            line += f"  [{extra}]"
        if facts.get("error"):
            line += f"  {facts['error']}"
        lines.append(line)
    note = status_note(view)
    if note:
        lines.append(note)
    if view.status in ("failed", "quarantined"):
        lines.extend(failure_lines(view))
    return lines


def failure_lines(view: RunView) -> list[str]:
    """The failure, so that a person can act on it without reading the source."""
    f = failure_report(view)
    lines = [
        f"FAILED at node {f['node']}"
        + (f" ({f['kind']}, flow line {f['source']})" if f.get("source") else "")
        + (f" after {f['attempts']} attempt(s)" if f.get("attempts") else ""),
        f"  error:    {f['message']}" + (f"  [SQLSTATE {f['sqlstate']}]" if f.get("sqlstate") else ""),
    ]
    if f.get("detail"):
        lines.append(f"  detail:   {f['detail']}")
    if f.get("hint"):
        lines.append(f"  hint:     {f['hint']}")
    if f.get("sql"):
        sql_lines = f["sql"].strip().splitlines()
        lines.append("  sql:      " + sql_lines[0])
        lines.extend("            " + s for s in sql_lines[1:12])
    lines.append(f"  resume:   {f['resume_command']}   (retries the failed node; completed nodes are kept)")
    lines.append(f"  restart:  dbt-durable restart {view.run_id} --from {str(f['node']).split('#')[0]}")
    return lines


def print_run(view: RunView, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    if is_terminal(stream):
        _console(stream).print(tree_renderable(view))
    else:
        print("\n".join(plain_tree(view)), file=stream)


def watch(
    views: Views,
    run_id: str,
    interval_s: float = 0.5,
    stream: TextIO | None = None,
    timeout_s: float | None = None,
    on_view: Callable[[RunView], None] | None = None,
) -> RunView:
    """Show the run live until it ends (finished, or parked waiting with nothing running):
    a refreshing tree on a terminal; otherwise one line per node state change."""
    stream = stream or sys.stdout
    started = time.monotonic()
    view = views.run_view(run_id)

    def ended(v: RunView) -> bool:
        return v.finished or (timeout_s is not None and time.monotonic() - started > timeout_s)

    if is_terminal(stream):
        from rich.live import Live

        with Live(tree_renderable(view), console=_console(stream), refresh_per_second=4) as live:
            while not ended(view):
                time.sleep(interval_s)
                view = views.run_view(run_id)
                live.update(tree_renderable(view))
        return view
    seen: dict[str, str] = {}
    last_status = ""
    print(run_header(view), file=stream, flush=True)
    while True:
        for _, node_id, text, facts in node_rows(view):
            state = facts["state"] or "pending"
            if seen.get(node_id, "pending") != state:
                extra = _facts_text(facts)
                print(
                    f"{state:<9} {node_id:<10} {text}"
                    + (f"  [{extra}]" if extra else "")
                    + (f"  {facts['error']}" if facts.get("error") else ""),
                    file=stream,
                    flush=True,
                )
                seen[node_id] = state
        if view.status != last_status:
            print(f"run {view.status}" + (f": {status_note(view)}" if status_note(view) else ""), file=stream)
            last_status = view.status
        if on_view is not None:
            on_view(view)
        if ended(view):
            break
        time.sleep(interval_s)
        view = views.run_view(run_id)
    if view.status in ("failed", "quarantined"):
        print("\n".join(failure_lines(view)), file=stream)
    return view
