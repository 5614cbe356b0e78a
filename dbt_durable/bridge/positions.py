"""Positions in a dbt model's source file for positions in its rendered flow.

Jinja renders a model before its flow is parsed, so the parser counts lines and columns in the
rendered text. A user edits the source file: :func:`source_position` maps a rendered position
back by aligning the two texts (lines first, then characters inside the lines Jinja changed).
A position inside text that Jinja produced (a macro's expansion, say) maps to the start of the
Jinja expression that produced it.
"""

from __future__ import annotations

from difflib import SequenceMatcher

from dbt_durable.errors import FlowError


def _offset(text: str, line: int, col: int) -> int:
    lines = text.split("\n")
    line = min(max(line, 1), len(lines))
    return sum(len(x) + 1 for x in lines[: line - 1]) + max(col - 1, 0)


def _line_col(text: str, offset: int) -> tuple[int, int]:
    before = text[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1


def _map_offset(source: str, rendered: str, j: int) -> int:
    matcher = SequenceMatcher(None, source, rendered, autojunk=False)
    for tag, i1, _i2, j1, j2 in matcher.get_opcodes():
        if j1 <= j < j2 or (j == j2 == len(rendered)):
            return i1 + (j - j1) if tag == "equal" else i1
    return len(source)


def source_position(source: str, rendered: str, line: int, col: int) -> tuple[int, int]:
    """The 1-based (line, col) in ``source`` of (line, col) in ``rendered``."""
    src_lines, out_lines = source.split("\n"), rendered.split("\n")
    matcher = SequenceMatcher(None, src_lines, out_lines, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if not j1 <= line - 1 < max(j2, j1 + 1):
            continue
        if tag == "equal":
            return i1 + (line - 1 - j1) + 1, col
        # Jinja changed these lines: align their characters.
        src_block = "\n".join(src_lines[i1:i2])
        out_block = "\n".join(out_lines[j1:j2])
        at = _map_offset(src_block, out_block, _offset(out_block, line - j1, col))
        sub_line, sub_col = _line_col(src_block, at)
        return i1 + sub_line, sub_col
    return line, col


def relocate(exc: FlowError, source: str | None, rendered: str, origin: str) -> FlowError:
    """``exc`` (positions in ``rendered``) located in the model's ``source`` file."""
    if not source:
        return exc.relocate(origin)
    line, col = source_position(source, rendered, exc.line, exc.col)
    return FlowError(exc.message, source, line, col, origin)


def describe_step(flow_text: str, source: str | None, origin: str, line: int, col: int, snippet: str) -> str:
    """``models/x.sql:LINE:COL: <snippet>`` for a step at (line, col) of the rendered flow."""
    if source and line:
        line, col = source_position(source, flow_text, line, col)
    one_line = " ".join(snippet.split())
    if len(one_line) > 120:
        one_line = one_line[:117] + "..."
    return f"{origin}:{line}:{col}: {one_line}" if line else f"{origin}: {one_line}"
