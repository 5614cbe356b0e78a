"""Samples, their summaries and ratios measured side by side."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class Samples:
    """Repeated measurements of one quantity (seconds unless the name says otherwise)."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def summary(self) -> dict[str, Any]:
        v = self.values
        return {
            "min": min(v),
            "median": statistics.median(v),
            "max": max(v),
            "n": len(v),
            "samples": [round(x, 6) for x in v],
        }


def sides(rep: int, first: str, second: str) -> tuple[str, str]:
    """The order of a side-by-side pair in repetition ``rep``: the side that goes first alternates."""
    return (first, second) if rep % 2 == 0 else (second, first)


def percentile(values: list[float], pct: int) -> float:
    """The ``pct``-th percentile (1-99) of ``values``, interpolated between the closest ranks."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def timed(func: Callable[[], T]) -> tuple[float, T]:
    """Wall time of ``func()`` (after a GC, so one sample does not pay for another's garbage)."""
    gc.collect()
    start = time.perf_counter()
    value = func()
    return time.perf_counter() - start, value


def clocked(func: Callable[[], T]) -> tuple[float, float, T]:
    """Wall time and this process's CPU time of ``func()``."""
    gc.collect()
    start, cpu = time.perf_counter(), time.process_time()
    value = func()
    return time.perf_counter() - start, time.process_time() - cpu, value


def paired_ratios(num: Samples, den: Samples) -> Samples:
    """Ratios of samples taken side by side (rep i of ``num`` over rep i of ``den``).

    Pairing cancels most of the drift of a shared, noisy machine: both sides of a pair ran
    within seconds of each other.
    """
    return Samples([a / b for a, b in zip(num.values, den.values, strict=True)])
