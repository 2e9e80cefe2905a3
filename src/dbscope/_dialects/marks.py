"""The mark dbscope leaves on the databases it makes for test runs (a comment, an SQLite
header field), telling a later run that it may drop them, and what the tables made in them
were made from. Not a table: the app and its migrations see nothing of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

# What a server holds under a database's name: nothing, a database that bears dbscope's mark
# (dbscope made it for a test run), or one someone else made.
Presence = Literal["absent", "marked", "unmarked"]
# The mark on the databases dbscope makes, telling a later run that it may drop them.
MARK: Final = "dbscope test database"
# What follows MARK once the run has made the app's tables from its metadata: their
# fingerprint (dbscope.testing), so that a later run reuses the database only for the same.
TABLES: Final = "; tables "


@dataclass(frozen=True)
class Found:
    """What a server holds under a test database's name, and the fingerprint of the tables
    dbscope made in it, if its mark carries one."""

    presence: Presence
    tables: str | None = None


def read_mark(mark: object) -> Found:
    """What a database's mark (its comment) says: dbscope's, with its tables' fingerprint
    or without, or someone else's."""
    if mark == MARK:
        return Found("marked")
    if isinstance(mark, str) and mark.startswith(MARK + TABLES):
        return Found("marked", mark.removeprefix(MARK + TABLES))
    return Found("unmarked")


def tables_mark(fingerprint: str) -> str:
    """dbscope's mark, carrying the fingerprint of the tables made in the database."""
    return f"{MARK}{TABLES}{fingerprint}"
