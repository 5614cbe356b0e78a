"""Recognition of ``$name`` references and ``{var}`` variables inside step text.

:data:`REF` is the reference grammar (pg_durable's): ``$name``, ``$name.col``, ``$name.*``,
each optionally followed by ``?``. :func:`find_refs` applies it to any text (HTTP URLs,
bodies, headers, ``break()`` values). :func:`find_sql_refs` reads a SQL step the way
PostgreSQL's lexer does and tells, for every reference, the lexical position it sits in:

``code``
    ordinary SQL; the renderer puts a quoted literal here.
``comment``
    inside ``-- ...`` (ends at a newline or carriage return) or a nested ``/* ... */``.
``string``
    inside ``'...'`` (``''`` doubles a quote), ``E'...'`` (backslash escapes), ``U&'...'``,
    ``B'...'``, ``X'...'`` or ``N'...'``.
``identifier``
    inside ``"..."`` or ``U&"..."`` (``""`` doubles a quote).
``dollar``
    inside ``$$...$$`` or ``$tag$...$tag$``.

How ``$`` is read, as PostgreSQL reads it: ``$1`` is a parameter; ``$tag$`` (a tag is a
letter or ``_``, then letters, digits or ``_``; never a digit first) opens a dollar quote, so
``$name$`` is a dollar quote and not a reference (this is also what :data:`REF` says: a name
directly followed by ``$`` is not a reference); ``x$name`` is the identifier ``x$name``
(PostgreSQL identifiers may contain ``$``), not ``x`` followed by a reference. An unterminated
quote or comment runs to the end of the text, as PostgreSQL would read it before failing.

In a plain ``'...'`` string a backslash escapes the next character only when
``standard_conforming_strings`` is off, so the extent of such a string depends on that
setting; callers that do not know the setting should read the text both ways (see
:func:`find_sql_refs`).
"""

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

# PostgreSQL's scan.l: identifiers and dollar-quote tags take letters, "_" and any non-ASCII
# character; identifiers (not tags) also take digits and "$" after the first character.
_TAG = re.compile(r"\$(?:[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_\u0080-\U0010ffff]*)?\$")
_IDENT = re.compile(r"[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_$\u0080-\U0010ffff]*")
_PARAM = re.compile(r"\$[0-9]+")
_NUMBER = re.compile(r"[0-9][0-9A-Za-z_.]*")
_NEWLINE = re.compile(r"[\r\n]")

CODE, COMMENT, STRING, IDENTIFIER, DOLLAR = "code", "comment", "string", "identifier", "dollar"


@dataclass(frozen=True)
class Ref:
    """One ``$name`` reference found in a text, at ``start`` (0-based offset)."""

    name: str
    column: str | None  # None, a column name, or "*"
    null_safe: bool
    start: int
    end: int
    context: str = CODE  # for find_sql_refs: code, comment, string, identifier or dollar


def find_refs(text: str) -> list[Ref]:
    """Every ``$name`` reference in ``text``, in order (no SQL lexing)."""
    return [Ref(m["name"], m["col"], m["safe"] is not None, m.start(), m.end()) for m in REF.finditer(text)]


def find_sql_refs(text: str, backslash_escapes: bool = False) -> list[Ref]:
    """Every ``$name`` reference in the SQL ``text``, in order, with its lexical position.

    ``backslash_escapes``: read a backslash in a plain ``'...'`` string as an escape, as
    PostgreSQL does with ``standard_conforming_strings = off``.
    """
    return _Scanner(text, backslash_escapes).scan()


def line_col(text: str, offset: int) -> str:
    """``line:col`` (1-based) of ``offset`` in ``text``."""
    line = text.count("\n", 0, offset) + 1
    return f"{line}:{offset - (text.rfind(chr(10), 0, offset) + 1) + 1}"


class _Scanner:
    def __init__(self, text: str, backslash_escapes: bool) -> None:
        self.text = text
        self.backslash_escapes = backslash_escapes
        self.refs: list[Ref] = []

    def scan(self) -> list[Ref]:
        text, i, n = self.text, 0, len(self.text)
        while i < n:
            c = text[i]
            if c == "-" and text.startswith("--", i):
                i = self._region(i, self._line_end(i), COMMENT)
            elif c == "/" and text.startswith("/*", i):
                i = self._region(i, self._block_end(i), COMMENT)
            elif c == "'":
                i = self._region(i, self._quote_end(i + 1, "'", self.backslash_escapes), STRING)
            elif c == '"':
                i = self._region(i, self._quote_end(i + 1, '"', False), IDENTIFIER)
            elif c == "$":
                i = self._dollar(i)
            elif "0" <= c <= "9":
                m = _NUMBER.match(text, i)
                assert m is not None
                i = m.end()
            elif (m := _IDENT.match(text, i)) is not None:
                i = self._word(m.group(), m.end())
            else:
                i += 1
        return self.refs

    def _word(self, word: str, end: int) -> int:
        # A one-letter prefix directly before a quote makes a special string: E'..' (escapes),
        # B'..', X'..', N'..' (plain quoting), U&'..' and U&"..".
        text, low = self.text, word.lower()
        if end < len(text) and text[end] == "'" and low in ("e", "b", "x", "n"):
            escapes = low == "e" or (low == "n" and self.backslash_escapes)
            return self._region(end, self._quote_end(end + 1, "'", escapes), STRING)
        if low == "u" and text.startswith("&'", end):
            return self._region(end + 1, self._quote_end(end + 2, "'", False), STRING)
        if low == "u" and text.startswith('&"', end):
            return self._region(end + 1, self._quote_end(end + 2, '"', False), IDENTIFIER)
        return end

    def _dollar(self, i: int) -> int:
        text = self.text
        if (m := _PARAM.match(text, i)) is not None:
            return m.end()
        if (m := _TAG.match(text, i)) is not None:
            close = text.find(m.group(), m.end())
            return self._region(i, len(text) if close < 0 else close + len(m.group()), DOLLAR)
        if (m := REF.match(text, i)) is not None:
            self.refs.append(Ref(m["name"], m["col"], m["safe"] is not None, m.start(), m.end(), CODE))
            return m.end()
        return i + 1

    def _region(self, start: int, end: int, context: str) -> int:
        """Record the references inside ``text[start:end]`` as being in ``context``."""
        for m in REF.finditer(self.text, start, end):
            self.refs.append(Ref(m["name"], m["col"], m["safe"] is not None, m.start(), m.end(), context))
        return end

    def _line_end(self, i: int) -> int:
        m = _NEWLINE.search(self.text, i)
        return len(self.text) if m is None else m.start()

    def _block_end(self, i: int) -> int:
        text, depth, i = self.text, 1, i + 2
        while i < len(text):
            if text.startswith("/*", i):
                depth, i = depth + 1, i + 2
            elif text.startswith("*/", i):
                depth, i = depth - 1, i + 2
                if depth == 0:
                    return i
            else:
                i += 1
        return len(text)

    def _quote_end(self, i: int, quote: str, backslash: bool) -> int:
        """The offset just past the quote that closes a literal whose content starts at ``i``."""
        text, n = self.text, len(self.text)
        while i < n:
            c = text[i]
            if backslash and c == "\\":
                i += 2
            elif c == quote:
                if i + 1 < n and text[i + 1] == quote:
                    i += 2
                else:
                    return i + 1
            else:
                i += 1
        return n
