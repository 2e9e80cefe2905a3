"""The run's own database: named after the one the settings give, made for the run, dropped after.

The settings (``dbscope_url``) name a database; the tests run in another one on the same
server, named after it with ``_test`` added (``app`` gives ``app_test``, the SQLite file
``app.db`` gives ``app_test.db`` beside it), so the named database is never touched. As
pytest-django does with its test database, the plugin creates it when the run begins and
drops it when the run ends, unless told to keep it (``--dbscope-keep-tables``) or to keep it
and reuse it in the next run (``--dbscope-reuse-db``).

What the run finds under that name decides what it does (``_servers`` tells them apart):

- nothing: it creates the database, with dbscope's mark;
- a database dbscope made (a run that crashed, or that kept it): it reuses it with
  ``--dbscope-reuse-db``; otherwise it drops it and creates it anew, and says so;
- a database someone else made: it runs in it but never drops it, and drops only the tables
  it made there (``_tables``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sqlalchemy.engine import URL

from dbscope import Database
from dbscope._pytest_plugin._reporting import SetupError
from dbscope._pytest_plugin._servers import Presence, server_for

SUFFIX: Final = "_test"
# The longest database names the servers keep whole (PostgreSQL counts bytes, and would
# silently cut a longer name short, so that two runs could share one database).
NAME_LIMITS: Final = {"postgresql": ("bytes", 63), "mysql": ("characters", 64)}


@dataclass(frozen=True)
class RunDatabase:
    """The database the tests run in, and whether it is dbscope's to drop."""

    url: URL
    """Its URL, as dbscope resolves it (with the password, for connecting only)."""
    label: str
    """How messages name it: the database and its server, or the file; never a password."""
    owned: bool
    """dbscope made it, in this run or an earlier one: it may drop it."""
    reused: bool
    """An earlier run made it and kept it for this one: the tables in it are dbscope's."""


def open_run_database(named: str, *, reuse: bool, say: Callable[[str], None]) -> RunDatabase:
    """Find or make the run's own database, named after the database ``named`` gives.

    Raises:
        ConfigurationError: the URL is invalid.
        SetupError: the URL names no database to name the run's after, or the database
            cannot be made.
    """
    url = run_database_url(named)
    label = describe(url)
    server = server_for(url)
    presence = server.presence()
    if presence is Presence.MARKED and reuse:
        say(f"reusing the test database {label}, kept by an earlier run (--dbscope-reuse-db)")
        return RunDatabase(url, label, owned=True, reused=True)
    if presence is Presence.UNMARKED:
        say(
            f"the test database {label} exists and dbscope did not make it: the tests run in "
            "it, and dbscope drops neither it nor any table it did not make"
        )
        return RunDatabase(url, label, owned=False, reused=False)
    if presence is Presence.MARKED:
        server.drop(close_sessions=False)
        say(f"dropped the test database {label}, left by an earlier run, to make it anew")
    server.create()
    return RunDatabase(url, label, owned=True, reused=False)


def close_run_database(
    database: RunDatabase, *, kept_by: str | None, say: Callable[[str], None]
) -> None:
    """Drop the run's database if dbscope made it, unless the option ``kept_by`` keeps it."""
    if not database.owned:
        return
    if kept_by is not None:
        say(f"kept the test database {database.label} ({kept_by})")
        return
    # What sessions remain are this run's own, left open by its tests.
    server_for(database.url).drop(close_sessions=True)


def run_database_url(named: str) -> URL:
    """The URL of the run's database: ``named``'s, its database name followed by ``_test``."""
    given = Database(named)
    url = given.url
    backend = url.get_backend_name()
    if backend == "sqlite":
        if given.settings.is_memory:
            message = (
                "dbscope_url names an in-memory SQLite database, but the tests run in a "
                "database file of their own, named after the one dbscope_url names: name a "
                "file, e.g. sqlite+aiosqlite:///test.db (the tests then run in test_test.db)."
            )
            raise SetupError(message)
        path = Path(url.database or "")
        return url.set(database=str(path.with_name(f"{path.stem}{SUFFIX}{path.suffix}")))
    if backend not in NAME_LIMITS:
        message = (
            f"dbscope makes its test database on PostgreSQL, MariaDB/MySQL and SQLite, not "
            f"on {backend!r}: point dbscope_url at one of those."
        )
        raise SetupError(message)
    if not url.database:
        message = (
            f"dbscope_url {url!r} names no database, and the tests run in a database of "
            "their own named after it: add the database's name to the URL, e.g. "
            ".../app (the tests then run in app_test)."
        )
        raise SetupError(message)
    name = url.database + SUFFIX
    unit, limit = NAME_LIMITS[backend]
    if len(name.encode() if unit == "bytes" else name) > limit:
        message = (
            f"The test database's name {name!r} (the name in dbscope_url, then {SUFFIX!r}) is "
            f"longer than the {limit} {unit} {backend} allows: name a shorter database in "
            "dbscope_url."
        )
        raise SetupError(message)
    return url.set(database=name)


def describe(url: URL) -> str:
    """The database and its server (or the SQLite file), for messages: no user, no password."""
    if url.get_backend_name() == "sqlite":
        return repr(url.database)
    server = f"{url.host}:{url.port}" if url.port else (url.host or "the local server")
    return f"{url.database!r} on {server}"
