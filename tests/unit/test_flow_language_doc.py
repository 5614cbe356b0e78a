"""Every example in docs/flow-language.md is what the parser does.

``flow`` blocks: each line is ``<expression> -- is <parse>``; both sides must parse to the same
tree (the parse is written in function-call form, or as another spelling of the same flow).
``flow-error`` blocks: each line is ``<expression> -- error: <part of the message>``.
The "old precedence" table: its "now" column is the parse of its first column, and its last
column parses to the old reading (``a``, ``b``, ... stand for the SQL strings ``'a'``, ``'b'``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dbt_durable.errors import FlowError
from dbt_durable.flow.parser import parse
from dbt_durable.flow.printer import to_text

DOC = Path(__file__).resolve().parents[2] / "docs" / "flow-language.md"
TEXT = DOC.read_text()


def _blocks(kind: str) -> list[tuple[int, str]]:
    """(line number, line) of every non-empty line in the fenced blocks of ``kind``."""
    out = []
    for m in re.finditer(rf"^```{kind}\n(.*?)^```$", TEXT, re.S | re.M):
        first = TEXT.count("\n", 0, m.start(1)) + 1
        for i, line in enumerate(m.group(1).splitlines()):
            if line.strip():
                out.append((first + i, line))
    return out


EXAMPLES = _blocks("flow")
ERRORS = _blocks("flow-error")


def test_the_doc_has_examples() -> None:
    assert len(EXAMPLES) >= 40 and len(ERRORS) >= 8


@pytest.mark.parametrize(("lineno", "line"), EXAMPLES, ids=[f"line{n}" for n, _ in EXAMPLES])
def test_each_example_parses_as_stated(lineno: int, line: str) -> None:
    expr, sep, stated = line.rpartition("-- is ")
    assert sep, f"docs/flow-language.md:{lineno}: no '-- is <parse>'"
    got, want = parse(expr), parse(stated)
    assert got == want, f"docs/flow-language.md:{lineno}: {expr.strip()} parses as {to_text(got)}"
    assert parse(line) == got  # the stated parse is a comment: the line itself is a flow


@pytest.mark.parametrize(("lineno", "line"), ERRORS, ids=[f"line{n}" for n, _ in ERRORS])
def test_each_error_example_is_rejected_as_stated(lineno: int, line: str) -> None:
    expr, sep, message = line.rpartition("-- error: ")
    assert sep, f"docs/flow-language.md:{lineno}: no '-- error: <message>'"
    with pytest.raises(FlowError) as err:
        parse(expr)
    assert message.strip() in err.value.message, f"docs/flow-language.md:{lineno}"


def _table_rows() -> list[list[str]]:
    section = TEXT[TEXT.index("### Coming from the old precedence") :]
    section = section[: section.index("\n## ")]
    rows = []
    for line in section.splitlines():
        if line.startswith("| `"):
            cells = [c for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            rows.append([_code(c) for c in cells])
    return rows


def _code(cell: str) -> str:
    """The first code span of a table cell, with a, b, ... quoted as SQL strings."""
    m = re.search(r"`([^`]*)`", cell)
    if m is None:
        return cell.strip()
    return re.sub(r"(?<!')\b([a-z])\b(?!')", r"'\1'", m.group(1).replace("\\|", "|"))


ROWS = _table_rows()


def test_the_old_precedence_table_is_read() -> None:
    assert len(ROWS) >= 8


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_old_precedence_table(row: list[str]) -> None:
    written, old_reading, now, rewritten = row
    if now == "an error":
        with pytest.raises(FlowError):
            parse(written)
    else:
        assert parse(written) == parse(now)
    assert parse(rewritten) == parse(old_reading)
