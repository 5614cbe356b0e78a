"""The exceptions dbt-durable raises on purpose. Anything else escaping is a bug."""

from __future__ import annotations


class DurableError(Exception):
    """Base class of every error dbt-durable raises on purpose."""


class FlowError(DurableError):
    """A syntax or validation error in a flow, with its position and a caret excerpt.

    ``line`` and ``col`` are 1-based and always set.
    """

    def __init__(self, message: str, source: str, line: int, col: int, origin: str = "<flow>"):
        self.message = message
        self.line = line
        self.col = col
        self.origin = origin
        lines = source.splitlines() or [""]
        self.excerpt = lines[line - 1] if 0 < line <= len(lines) else ""
        super().__init__(self.render())

    def render(self) -> str:
        caret = " " * (max(self.col, 1) - 1) + "^"
        return f"{self.origin}:{self.line}:{self.col}: {self.message}\n  {self.excerpt}\n  {caret}"

    def relocate(self, origin: str, line_offset: int = 0) -> FlowError:
        """The same error located in a file (e.g. a dbt model), ``line_offset`` lines down."""
        moved = FlowError(self.message, self.excerpt, 1, self.col, origin)
        moved.line = self.line + line_offset
        moved.args = (moved.render(),)
        return moved


class ConfigError(DurableError):
    """Bad configuration or command-line input."""


class ConnectionFailed(DurableError):
    """The database cannot be reached; the message names the DSN with its password hidden."""


class RunNotFound(DurableError):
    """No run has the given id (or it is not visible to this role)."""


class GraphChanged(DurableError):
    """A run exists for this key but its flow definition differs; a fresh start is required."""


class LeaseLost(DurableError):
    """Another runner took over this run; this runner must stop without writing."""


class RunCancelled(DurableError):
    """The run was cancelled."""


class StepFailed(DurableError):
    """A step failed after its retries."""

    def __init__(self, exec_key: str, message: str):
        self.exec_key = exec_key
        self.message = message
        super().__init__(f"node {exec_key} failed: {message}")


class ResultTooLarge(DurableError):
    """A step's result exceeded the configured cap. Results are never truncated silently."""


class BindingError(DurableError):
    """A ``$name`` reference cannot be rendered (unbound, no rows, NULL, unknown column...)."""
