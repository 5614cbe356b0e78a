"""The process that runs dbt for a durable build: ``python -m dbt_durable.bridge.dbt_child ARGS``.

It runs dbt in-process, exactly as ``dbt build ARGS`` would: dbt's own console lines (the
``START``/``OK`` lines, ``Finished running ...`` and the ``Done. PASS=... TOTAL=...`` summary)
go to stdout at dbt's default level, and debug events only to ``logs/dbt.log``.

Besides, an event callback writes one JSON line per finished node (dbt's ``NodeFinished``,
which dbt fires for every node it executes, skips or no-ops) and per error outside any node to
the file descriptor named by ``DBT_DURABLE_EVENT_FD`` (the parent's pipe), so the parent can
checkpoint each node as it finishes without parsing dbt's console text.

Exit code: 0 when dbt succeeded, 1 when a node failed, 2 when dbt itself failed (dbt's own
convention).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any

PROTOCOL_KEY = "dbt_durable_event"
EVENT_FD_ENV = "DBT_DURABLE_EVENT_FD"


def event_line(name: str, level: str, message: str, node_info: dict[str, Any]) -> str:
    """The JSON line that the parent reads for one event (``node_info`` empty for no node)."""
    return json.dumps({PROTOCOL_KEY: name, "level": level, "msg": message, "node_info": node_info})


def _callback(fd: int) -> Any:
    lock = threading.Lock()  # dbt fires events from its worker threads

    def on_event(event: Any) -> None:
        name = event.info.name
        if name == "NodeFinished":
            info = event.data.node_info
            result = event.data.run_result
            node = {
                "unique_id": info.unique_id,
                "node_name": info.node_name,
                "node_status": result.status or info.node_status,
                "resource_type": info.resource_type,
            }
            message = result.message or ""
        elif event.info.level == "error" and not getattr(event.data, "node_info", None):
            node, message = {}, event.info.msg
        else:
            return
        data = (event_line(name, event.info.level, message, node) + "\n").encode()
        with lock:
            while data:
                data = data[os.write(fd, data) :]

    return on_event


def main(argv: list[str]) -> int:
    from dbt.cli.main import dbtRunner

    fd = int(os.environ.get(EVENT_FD_ENV, "-1"))
    callbacks = [_callback(fd)] if fd >= 0 else []
    result = dbtRunner(callbacks=callbacks).invoke(argv)
    if result.success:
        return 0
    return 2 if result.exception is not None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
