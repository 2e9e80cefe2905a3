"""What a counted statement is described by: its shape, and where in the application it ran.

The shape is the statement with its values and placeholders as ``?`` (``$1``, ``%s``,
``%(name)s``, ``?``, ``:name``, and the casts asyncpg and psycopg add to them), lists of them
as ``(...)``, the columns of each ``SELECT`` as ``...``, its comments and the quotes around
names gone: the same for every run of the same code, on every driver. Read with one regular
expression of SQL's tokens, so that a ``?`` inside a string or a ``--`` inside a name is never
taken for what it is not.

The origin is the first frame outside the packages that carry a statement to the driver,
followed across SQLAlchemy's greenlet: the frames of the synchronous work end where the
greenlet began, and the greenlet that switched to it holds the coroutine that awaits it.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Any, Final

import greenlet  # type: ignore[import-untyped]  # greenlet ships no type hints
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.sql.visitors import iterate

# The packages a statement passes through on its way from the application to the driver:
# the origin of a statement is the first frame outside them.
CARRIERS: Final = frozenset(
    {
        "anyio",
        "asyncio",
        "contextlib",
        "dbscope",
        "fastapi",
        "greenlet",
        "httpx",
        "sqlalchemy",
        "sqlmodel",
        "starlette",
        "uvicorn",
    }
)
# One token of SQL text: a comment, a value (a literal or a placeholder of any paramstyle, with
# the cast asyncpg and psycopg put after it), a quoted name, a word, or one other character.
TOKEN: Final = re.compile(
    r"""
    (?P<comment>/\*.*?\*/|--[^\n]*)
    |(?P<value>
        (?:'(?:[^']|'')*'           # a string
        |\$\d+|%\(\w+\)s|%s|\?      # $1, %(name)s, %s, ?
        |(?<![:\w]):\w+             # :name, never a cast's ::
        |(?<![\w.])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.])  # a number, not part of a name
        )(?:::\w+(?:\([\d,\s]*\))?(?:\[\])*)?
      )
    |(?P<name>"(?:[^"]|"")*"|`(?:[^`]|``)*`)
    |(?P<word>\w+)
    |(?P<space>\s+)
    |(?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
# After the values became ?: a list of them, and the rows of a multi-row VALUES.
VALUE_LIST: Final = re.compile(r"\(\s*\?(?:\s*,\s*\?)*\s*\)")
REPEATED_LISTS: Final = re.compile(r"\(\.\.\.\)(?:\s*,\s*\(\.\.\.\))+")
# How drivers write a LIMIT and an OFFSET: `LIMIT ? OFFSET ?` (`LIMIT ?, ?`, the offset
# first, on MariaDB/MySQL; `LIMIT ALL OFFSET ?` for an offset alone on PostgreSQL).
LIMIT_ALL: Final = re.compile(r"\bLIMIT\s+ALL\b", re.IGNORECASE)
LIMIT_COMMA: Final = re.compile(r"\bLIMIT\s+\?\s*,\s*\?", re.IGNORECASE)
ADDED_OFFSET: Final = re.compile(r"\b(LIMIT\s+\?)\s+OFFSET\s+\?", re.IGNORECASE)


@functools.lru_cache(maxsize=1024)  # an N+1 sends the same text again and again
def shape(statement: str, *, offsets_added: bool = False) -> str:
    """``statement`` with its values as ``?``, lists as ``(...)``, each ``SELECT``'s columns
    as ``...``, its comments and the quotes around names gone, and its spaces collapsed; a
    limit and an offset as ``LIMIT ? OFFSET ?``, and without ``OFFSET ?`` where
    ``offsets_added`` (:func:`has_added_offsets`)."""
    tokens: list[tuple[str, str]] = []
    for match in TOKEN.finditer(statement):
        kind = match.lastgroup or "other"
        text = match.group()
        if kind == "comment":
            kind, text = "space", " "
        elif kind == "value":
            text = "?"
        elif kind == "name":
            kind, text = "word", text[1:-1]
        tokens.append((kind, text))
    text = "".join(text for _, text in _without_columns(tokens))
    text = REPEATED_LISTS.sub("(...)", VALUE_LIST.sub("(...)", text))
    text = LIMIT_COMMA.sub("LIMIT ? OFFSET ?", LIMIT_ALL.sub("LIMIT ?", text))
    if offsets_added:
        text = ADDED_OFFSET.sub(r"\1", text)
    return " ".join(text.split())


def has_added_offsets(statement: str, context: Any) -> bool:
    """Whether each OFFSET in ``statement``, compiled for the execution ``context``, is the
    dialect's, added to a bare LIMIT (SQLite writes ``.limit(5)`` as ``LIMIT ? OFFSET ?``,
    the offset 0): none of its SELECTs asks for one. False for SQL sent as written."""
    if "OFFSET" not in statement.upper():
        return False
    selected = getattr(getattr(context, "compiled", None), "statement", None)
    if not isinstance(selected, ClauseElement):
        return False
    # _offset_clause: where a SELECT keeps its .offset(); SQLAlchemy names it nowhere public.
    return all(getattr(part, "_offset_clause", None) is None for part in iterate(selected))


def _without_columns(tokens: list[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """The tokens, with what lies between each SELECT and its own FROM as `` ... ``."""
    index = 0
    while index < len(tokens):
        kind, text = tokens[index]
        yield kind, text
        index += 1
        if kind == "word" and text.upper() == "SELECT":
            end = _own_from(tokens, index)
            if end is not None:
                yield "space", " ... "
                index = end


def _own_from(tokens: list[tuple[str, str]], start: int) -> int | None:
    """The index of the FROM of the SELECT before ``start``, at its own depth; None if it
    has none (``SELECT 1``)."""
    depth = 0
    for index in range(start, len(tokens)):
        kind, text = tokens[index]
        if text == "(":
            depth += 1
        elif text == ")":
            depth -= 1
            if depth < 0:
                return None
        elif depth == 0 and kind == "word" and text.upper() == "FROM":
            return index
    return None


def origin() -> str | None:
    """Where the statement being sent now came from: ``path:line`` of the first frame outside
    the :data:`CARRIERS`, following SQLAlchemy's greenlet back to the coroutine awaiting it."""
    frame: FrameType | None = sys._getframe(1)
    current: greenlet.greenlet | None = greenlet.getcurrent()
    while current is not None:
        while frame is not None:
            module = str(frame.f_globals.get("__name__", ""))
            if module.partition(".")[0] not in CARRIERS:
                return f"{shown_path(frame.f_code.co_filename)}:{frame.f_lineno}"
            frame = frame.f_back
        # A frame chain ends where a greenlet began; the one that switched to it goes on.
        current = current.parent
        frame = None if current is None else current.gr_frame
    return None


@functools.lru_cache(maxsize=256)
def shown_path(filename: str) -> str:
    """``filename`` relative to the current directory when inside it, else as it is."""
    relative = os.path.relpath(filename)
    return filename if relative.startswith(os.pardir) else relative
