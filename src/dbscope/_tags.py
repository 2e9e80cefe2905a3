"""SQL tagged with where it came from, in the sqlcommenter format.

With the ``sql_comments`` setting on, every statement a unit of work sends carries a comment
naming its origin, which the server shows beside the query (``pg_stat_activity``, MariaDB's
processlist, slow-query logs)::

    SELECT ... /*application='notes',controller='get_note',db_driver='asyncpg',
    framework='fastapi%3A0.165.0',route='%2Fnotes%2F%7Bnote_id%7D'*/

The format is sqlcommenter's (https://google.github.io/sqlcommenter/spec/): keys and values
URL-encoded, each value in single quotes with ``'`` escaped, the pairs sorted by key and joined
with commas, in ``/*...*/``, appended to the statement or (``"prepend"``) put before it.

A :class:`SqlTagger` belongs to one Database: it holds the tags every unit shares (the
application, the driver), renders each set of tags once (the request path looks its comment
up, it does not build it), and installs the ``before_cursor_execute`` listener that adds the
running unit's comment to each statement. With the setting off there is no tagger and no
listener, so statements pay nothing.

The tags never hold a per-request value: a statement text that changes with every request
makes asyncpg prepare it again each time (an extra round trip per statement). The request id
goes to PostgreSQL's ``application_name`` instead (``Backend.name_transaction``).

OpenTelemetry's SQLAlchemy instrumentation has a commenter of its own, but it is private to
that package, always doubles ``%`` (wrong for asyncpg and aiosqlite, whose drivers never read
``%`` in statement text) and knows no route for FastAPI; google-cloud-sqlcommenter is
unmaintained since 2021 and does the same. Hence this module.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal
from urllib.parse import quote

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from dbscope._dialects import driver as driver_record
from dbscope._exceptions import ConfigurationError

SqlComments = Literal["off", "append", "prepend"]
PLACEMENTS: Final[tuple[SqlComments, ...]] = ("off", "append", "prepend")
# DB-API paramstyles whose drivers read '%' in the statement text as the start of a
# placeholder (psycopg, asyncmy): there the comment's '%' (from URL-encoding) must be '%%'.
PERCENT_PARAMSTYLES: Final = frozenset({"format", "pyformat"})
# Distinct tag sets whose comments are kept; the routes of an app and a few script tags fit.
CACHED_COMMENTS: Final = 1024
# The statements whose executemany() such a driver may send as one (pymysql's rule).
BATCHED_STATEMENT: Final = re.compile(r"\s*(?:INSERT|REPLACE)\b", re.IGNORECASE)


def serialize(tags: Mapping[str, str]) -> str:
    """The sqlcommenter comment for ``tags`` (``/*key='value',...*/``); ``""`` for none."""
    pairs = ",".join(f"{_encode(key)}='{_encode(value)}'" for key, value in sorted(tags.items()))
    return f"/*{pairs}*/" if pairs else ""


def _encode(text: str) -> str:
    # URL-encoding leaves only letters, digits and "_.-~" as they are, so no value can end
    # the comment ("*/") or its quotes; the spec's escape of "'" is kept for its letter.
    return quote(text, safe="").replace("'", "\\'")


def check_tags(tags: object) -> Mapping[str, str]:
    """Return ``tags`` if it maps non-empty strings to strings, else raise ConfigurationError."""
    if not isinstance(tags, Mapping):
        message = (
            f"tags={tags!r} is not a mapping; give a dict of str to str, e.g. "
            "tags={'job': 'purge'}."
        )
        raise ConfigurationError(message)
    for key, value in tags.items():
        if not isinstance(key, str) or not key:
            message = f"tags={dict(tags)!r} has the key {key!r}; tag names are non-empty str."
            raise ConfigurationError(message)
        if not isinstance(value, str):
            message = (
                f"tags={dict(tags)!r} has the value {value!r} for {key!r}; tag values are "
                f"str: write {key!r}: str({value!r}) if that is what you mean."
            )
            raise ConfigurationError(message)
    return tags


class SqlComment:
    """One unit's comment, rendered once: as the server sees it, and with ``%`` doubled for the
    drivers that read ``%`` in statement text."""

    __slots__ = ("escaped", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.escaped = text.replace("%", "%%")

    def __repr__(self) -> str:
        return f"SqlComment({self.text!r})"


class SqlTagger:
    """The SQL comments of one Database's units of work.

    Args:
        placement: ``"append"`` (after the statement, as the spec says) or ``"prepend"``.
        shared: the tags of every unit (the application, the driver); a unit's own win.
        batched_inserts: the driver batches an ``executemany()`` INSERT only when its text
            ends with the VALUES list: those statements are left alone (tagged, each row
            would be a statement of its own).
    """

    def __init__(
        self, placement: SqlComments, shared: Mapping[str, str], *, batched_inserts: bool = False
    ) -> None:
        self.placement = placement
        self.batched_inserts = batched_inserts
        self.shared = dict(check_tags(shared))
        self.default = SqlComment(serialize(self.shared))
        self._render = functools.lru_cache(maxsize=CACHED_COMMENTS)(self._comment_of)

    def comment(self, tags: Mapping[str, str] | None) -> SqlComment:
        """The comment of a unit with ``tags`` (checked: see check_tags; None: the shared tags
        alone); made once per distinct tags."""
        if not tags:
            return self.default
        return self._render(tuple(tags.items()))

    def _comment_of(self, items: tuple[tuple[str, str], ...]) -> SqlComment:
        return SqlComment(serialize({**self.shared, **dict(items)}))

    def install(self, engine: AsyncEngine, running: Callable[[], SqlComment | None]) -> None:
        """Add ``running()``'s comment (the unit running in this context) to every statement
        ``engine`` sends, except those that carry a comment of their own."""
        escape = engine.dialect.paramstyle in PERCENT_PARAMSTYLES
        prepend = self.placement == "prepend"
        batched = self.batched_inserts

        def tag_statement(
            connection: Any,
            cursor: Any,
            statement: str,
            parameters: Any,
            context: Any,
            executemany: bool,
        ) -> tuple[str, Any]:
            comment = running()
            if comment is None or "/*" in statement or "--" in statement:
                return statement, parameters  # the spec: a commented statement is left alone
            if executemany and batched and BATCHED_STATEMENT.match(statement):
                return statement, parameters
            text = comment.text
            # A statement run with no parameters at all (execution option no_parameters) is
            # not read for placeholders, even by those drivers.
            if escape and not (context is not None and context.no_parameters and not parameters):
                text = comment.escaped
            if prepend:
                return f"{text} {statement}", parameters
            body = statement.rstrip()
            if body.endswith(";"):  # the comment belongs to the statement, before its ';'
                return f"{body[:-1]} {text};", parameters
            return f"{statement} {text}", parameters

        event.listen(engine.sync_engine, "before_cursor_execute", tag_statement, retval=True)


def sql_tagger(placement: SqlComments, *, driver: str, application: str | None) -> SqlTagger | None:
    """The tagger for a Database with the ``sql_comments`` setting ``placement``; None when
    off. Every unit is tagged with ``driver`` (``db_driver``) and ``application``, if any."""
    if placement == "off":
        return None
    shared = {"db_driver": driver}
    if application:
        shared["application"] = application
    record = driver_record(driver)
    return SqlTagger(
        placement, shared, batched_inserts=record is not None and record.batches_inserts
    )
