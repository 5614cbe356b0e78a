"""What a scenario hands back, and what every scenario is given."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.sizes import Sizes
from bench.stats import Samples


@dataclass
class Bench:
    """The run-wide context: the database, the sizes, the progress printer."""

    dsn: str
    sizes: Sizes
    log: Callable[[str], None]


@dataclass
class ScenarioResult:
    """One scenario's samples, headline metrics (``None`` = not measured, see ``reasons``) and notes."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Samples] = field(default_factory=dict)
    metrics: dict[str, float | None] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def sample(self, name: str, value: float) -> None:
        self.stats.setdefault(name, Samples()).add(value)

    def skip(self, metrics: list[str], reason: str) -> None:
        """Record ``metrics`` as not measured, with the reason."""
        for metric in metrics:
            self.metrics[metric] = None
            self.reasons[metric] = reason

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "params": self.params,
            "stats": {name: s.summary() for name, s in self.stats.items()},
            "metrics": self.metrics,
            "elapsed_s": round(self.elapsed_s, 3),
        }
        if self.reasons:
            out["reason"] = "; ".join(sorted(set(self.reasons.values())))
            out["reasons"] = self.reasons
        if self.notes:
            out["notes"] = self.notes
        return out
