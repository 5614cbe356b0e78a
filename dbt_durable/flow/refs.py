"""Recognition of ``$name`` references and ``{var}`` variables inside step text."""

from __future__ import annotations

import re
from dataclasses import dataclass

# $name, $name.col, $name.*, each optionally followed by ? (null-safe). A name directly
# followed by "$" is a dollar-quote tag ($body$), and $1 is a parameter: neither is a reference.
REF = re.compile(
    r"\$(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:\.(?P<col>\*|[A-Za-z_][A-Za-z0-9_]*))?"
    r"(?P<safe>\?)?"
    r"(?![A-Za-z0-9_$])"
)

VAR = re.compile(r"\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Ref:
    """One ``$name`` reference found in a text, at ``start`` (0-based offset)."""

    name: str
    column: str | None  # None, a column name, or "*"
    null_safe: bool
    start: int
    end: int


def find_refs(text: str) -> list[Ref]:
    """Every ``$name`` reference in ``text``, in order."""
    return [Ref(m["name"], m["col"], m["safe"] is not None, m.start(), m.end()) for m in REF.finditer(text)]
