"""Fault injection for crash tests: ``DBT_DURABLE_FAULT=<point>@<exec_key>[@<flow name>]``
SIGKILLs the runner when it reaches that point of that node (in runs of that flow only, if
a flow name is given).

Points: ``before_step`` (nothing of the step sent yet), ``in_step`` (the step's SQL ran, its
transaction is open, the checkpoint is not written) and ``after_commit`` (step and checkpoint
committed, the next node not started). Unset, this costs one dict lookup per step.
"""

from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("DBT_DURABLE_FAULT", "")
_POINT, _, _REST = _SPEC.partition("@")
_KEY, _, _FLOW = _REST.partition("@")


def hit(point: str, exec_key: str, flow_name: str) -> None:
    """Kill this process with SIGKILL if the configured fault matches this point."""
    if _SPEC and point == _POINT and exec_key == _KEY and (not _FLOW or _FLOW == flow_name):
        os.kill(os.getpid(), signal.SIGKILL)
