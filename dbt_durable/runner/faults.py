"""Fault injection for crash tests: ``DBT_DURABLE_FAULT=<point>@<exec_key>`` SIGKILLs the runner.

Points: ``before_step`` (nothing of the step sent yet), ``in_step`` (the step's SQL ran, its
transaction is open, the checkpoint is not written) and ``after_commit`` (step and checkpoint
committed, the next node not started). Unset, this costs one dict lookup per step.
"""

from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("DBT_DURABLE_FAULT", "")
_POINT, _, _KEY = _SPEC.partition("@")


def hit(point: str, exec_key: str) -> None:
    """Kill this process with SIGKILL if the configured fault matches ``point`` and ``exec_key``."""
    if _SPEC and point == _POINT and exec_key == _KEY:
        os.kill(os.getpid(), signal.SIGKILL)
