"""The process that runs dbt for a durable build: ``python -m dbt_durable.bridge.dbt_child ARGS``.

It runs dbt in-process with an event callback and writes one JSON line to stdout per event
that the parent needs: a node finished (to checkpoint it), a node line to show, or an error
(a compilation error, say, which fails the build before any node runs). dbt's
own console log is off (``--log-level none``), so dbt formats no console line at all, in
either text or JSON; that formatting cost plain ``--log-format json`` builds about a tenth of
their time. ``logs/dbt.log`` is written as in any dbt run.

Exit code: 0 when dbt succeeded, 1 when a node failed, 2 when dbt itself failed (dbt's own
convention).
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

PROTOCOL_KEY = "dbt_durable_event"


def event_line(name: str, level: str, message: str, node_info: dict[str, Any]) -> str:
    """The JSON line that the parent reads for one event (``node_info`` empty for no node)."""
    return json.dumps({PROTOCOL_KEY: name, "level": level, "msg": message, "node_info": node_info})


def _callback(out: TextIO) -> Any:
    def on_event(event: Any) -> None:
        info = getattr(event.data, "node_info", None)
        if info is not None and info.node_status not in ("", "started"):
            node = {
                "unique_id": info.unique_id,
                "node_name": info.node_name,
                "node_status": info.node_status,
                "resource_type": info.resource_type,
            }
        elif event.info.level == "error":
            node = {}
        else:
            return
        out.write(event_line(event.info.name, event.info.level, event.info.msg, node) + "\n")
        out.flush()

    return on_event


def main(argv: list[str]) -> int:
    from dbt.cli.main import dbtRunner

    # --log-level alone would silence logs/dbt.log too; the file keeps dbt's default level.
    file_level = [] if "--log-level-file" in argv else ["--log-level-file", "debug"]
    result = dbtRunner(callbacks=[_callback(sys.stdout)]).invoke([*argv, "--log-level", "none", *file_level])
    if result.success:
        return 0
    return 2 if result.exception is not None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
