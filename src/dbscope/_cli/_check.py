"""``dbscope check``: can the application reach its database, and how does it stand?

Connects as the application does, then reports the server's version, the pool's settings,
the round-trip time of ``SELECT 1``, whether commits wait for a synchronous standby, each
read replica's state and lag (or why it serves no reads), and, when there is an
``alembic.ini``, whether the database is at the migrations' head. Exit code 1 when a check
fails, for CI and deployment scripts; the URL is shown with its password hidden.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path
from typing import Final

from sqlalchemy.exc import DBAPIError

from dbscope import ConfigurationError, Database
from dbscope._cli._common import Command, load_database
from dbscope.alembic import config_path, other_database
from dbscope.alembic import status as migration_status

ROUND_TRIPS: Final = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``dbscope check``."""
    parser.add_argument(
        "-c",
        "--config",
        metavar="ALEMBIC_INI",
        help="check the migrations of this alembic.ini (default: $ALEMBIC_CONFIG, else "
        "./alembic.ini if there is one)",
    )
    parser.add_argument(
        "--require-standby",
        action="store_true",
        help="fail unless commits wait for a synchronous standby (PostgreSQL)",
    )


def run(args: argparse.Namespace, extra: list[str]) -> int:
    """Check the database; 0 if every check passed, 1 if one failed."""
    db = load_database(args)
    config = _alembic_config(args.config)
    return asyncio.run(_check(db, config, require_standby=args.require_standby))


COMMAND: Final = Command(
    name="check",
    help="connect, and report the server, pool, latency, standby and migrations",
    description=__doc__,
    run=run,
    add_arguments=add_arguments,
)


def _alembic_config(given: str | None) -> Path | None:
    """The alembic.ini to check: the given one or the one $ALEMBIC_CONFIG names, which must
    exist, else ./alembic.ini if there is one.

    Raises:
        ConfigurationError: the given file does not exist (said before connecting).
    """
    if given is not None:
        return config_path(given, required=True)
    path = config_path()
    return path if path.is_file() else None


class _Report:
    """Prints one line per check and remembers whether one failed."""

    def __init__(self) -> None:
        self.failed = False

    def say(self, name: str, value: str, *, failed: bool = False) -> None:
        self.failed = self.failed or failed
        mark = "FAIL " if failed else ""
        print(f"{name + ':':<12}{mark}{value}", flush=True)


async def _check(db: Database, config: Path | None, *, require_standby: bool) -> int:
    report = _Report()
    report.say("database", _shown_url(db))
    async with db:
        report.say("server", _server(db))
        report.say("pool", _pool(db))
        report.say("latency", await _latency(db))
        # Read at connect(), as the app reads it (db.stats().durability).
        durability = db.stats().durability
        failed = require_standby and not (durability is not None and durability.commits_wait)
        backend = db.url.get_backend_name()
        said = f"not applicable to {backend}" if durability is None else durability.describe()
        report.say("standby", said, failed=failed)
        _replicas(db, report)
        if config is None:
            report.say("migrations", "no alembic.ini here; give one with --config to check it")
        else:
            await _migrations(db, config, report)
    return 1 if report.failed else 0


def _shown_url(db: Database) -> str:
    shown = db.url.render_as_string(hide_password=True)
    database = db.url.database
    if db.settings.is_memory and database:
        # SQLAlchemy escapes the ':' of ':memory:' ('%3Amemory%3A'): shown as users write it.
        shown = shown.replace(database.replace(":", "%3A"), database, 1)
    return shown


def _server(db: Database) -> str:
    assert db.server is not None  # connected
    version = ".".join(str(part) for part in db.server.version)
    return f"{db.server.title} {version}".strip()


def _pool(db: Database) -> str:
    settings = db.settings
    # In force: an in-memory SQLite database's pool holds its one connection and no more.
    size, overflow = db.stats().size, 0 if settings.is_memory else settings.max_overflow
    waiters = settings.pool_max_waiters
    recycle = settings.pool_recycle
    ping = settings.pool_pre_ping
    return ", ".join(
        (
            f"size {size} + overflow {overflow}",
            f"waits at most {settings.pool_timeout:g} s",
            f"waiters {'unbounded' if waiters is None else waiters}",
            f"recycle {'default' if recycle is None else recycle}",
            f"pre-ping {'default' if ping is None else ping}",
            f"connect timeout {settings.connect_timeout:g} s",
        )
    )


async def _latency(db: Database) -> str:
    async with db.engine.connect() as connection:
        await connection.exec_driver_sql("SELECT 1")  # the first one also begins
        samples = []
        for _ in range(ROUND_TRIPS):
            start = time.perf_counter()
            await connection.exec_driver_sql("SELECT 1")
            samples.append((time.perf_counter() - start) * 1000)
    return (
        f"{statistics.median(samples):.2f} ms median of {ROUND_TRIPS} round trips "
        f"(SELECT 1; max {max(samples):.2f} ms)"
    )


def _replicas(db: Database, report: _Report) -> None:
    # As connect()'s first check found them. A replica that serves no reads fails the check,
    # whatever the reason: its reads all go to the primary, which a deployment should know
    # of before it takes traffic, and a refused connection (user, database) does not mend.
    for replica in db.stats().replicas:
        if replica.state == "ready":
            lag = "an unknown number of" if replica.lag is None else str(replica.lag)
            report.say("replica", f"{replica.name} ready, {lag} bytes behind the primary")
        else:
            value = f"{replica.name} {replica.state}, serves no reads: {replica.reason}"
            report.say("replica", value, failed=True)


async def _migrations(db: Database, config: Path, report: _Report) -> None:
    elsewhere = _migrated_elsewhere(db, config)
    if elsewhere is not None:
        report.say("migrations", elsewhere, failed=True)
        return
    try:
        status = await migration_status(db, config=config)
    except DBAPIError as error:
        # Refused by the server (a user without SELECT on the version table, say): its own
        # words, first line, which hold no password.
        said = str(error.orig or error).strip().splitlines() or [type(error).__name__]
        report.say(
            "migrations", f"cannot read the version table ({config}): {said[0]}", failed=True
        )
        return
    current = ", ".join(status.current) or "none (never migrated)"
    heads = ", ".join(status.heads) or "none"
    if status.at_head:
        report.say("migrations", f"at head ({heads}; {config})")
    else:
        advice = "run: dbscope migrate upgrade head"
        value = f"not at head: the database is at {current}, the head is {heads}; {advice}"
        report.say("migrations", value, failed=True)


def _migrated_elsewhere(db: Database, config: Path) -> str | None:
    """Why the check of ``config`` would not be about the database it migrates: its
    ``sqlalchemy.url`` names another database than the app's; None if it names none."""
    try:
        named = other_database(db, config=config)
    except ConfigurationError as error:
        return str(error)
    if named is None:
        return None
    there, here = named.render_as_string(), db.url.render_as_string()  # passwords as ***
    return (
        f"{config} sets sqlalchemy.url to another database ({there}) than the app's, checked "
        f"here ({here}): Alembic, and `dbscope migrate` without --app or --prefix, migrate "
        "that one. Remove sqlalchemy.url from it to migrate the app's database, or correct it."
    )
