"""One migration run at a time per database (per schema, with ``POSTGRES_SCHEMA``).

Two ``dbscope migrate upgrade head`` at once (two deploys, or each instance of a service
migrating at start-up) would both read the version table before either wrote it, and both run
the same migrations: on MariaDB and MySQL, whose DDL commits by itself, a data migration's rows
twice; on PostgreSQL, the loser failing on the winner's tables. So a run takes a lock before
Alembic reads the version, and holds it until its transaction has ended: the second run waits,
then finds the database at head and does nothing.

The lock is each server's own (``Backend.lock_migrations``): on PostgreSQL an advisory lock
of the migrations' transaction (PgBouncer in transaction mode keeps no session's), on MariaDB
and MySQL the session's ``GET_LOCK`` (their DDL commits by itself, so the migrations run a
transaction per revision, Alembic's own way there), and on SQLite the file's
one write lock, taken at the transaction's ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Final

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from dbscope._dialects import backend

# How long a run waits for another's migrations, in seconds, before it gives up.
LOCK_WAIT: Final = 600.0
# The lock's name; a schema's migrations have a lock of their own (PostgreSQL), so that two
# schemas of one database migrate side by side.
LOCK_NAME: Final = "dbscope migrations"


def lock_name(schema: str | None) -> str:
    """The name of the lock the migrations of ``schema`` (None: the database's) take."""
    return LOCK_NAME if schema is None else f"{LOCK_NAME} of schema {schema}"


@contextlib.asynccontextmanager
async def migrating(
    connection: AsyncConnection, *, schema: str | None = None, seconds: float = LOCK_WAIT
) -> AsyncIterator[None]:
    """Take the migration lock on ``connection`` (outside any transaction), then begin the
    transaction the migrations run in; commit it, or roll it back on an error, and release
    the lock once it has ended. Where DDL commits by itself (MariaDB, MySQL), no transaction
    is begun here: Alembic begins one per revision, and records each as it commits.

    Raises:
        alembic.util.CommandError: the lock was not had within ``seconds`` (another run's
            migrations held it), or the server reported an error taking it.
    """
    rules = backend(connection.dialect.name)
    name = lock_name(schema)
    if rules.locks_migrations_in_transaction:  # let go with the transaction
        async with connection.begin():
            if not await connection.run_sync(rules.lock_migrations, name, seconds):
                raise _not_taken(False, schema, seconds)
            yield
        return
    taken = await connection.run_sync(rules.lock_migrations, name, seconds)
    await connection.rollback()  # the statements' transaction; the lock is the session's
    if not taken:
        raise _not_taken(taken, schema, seconds)
    try:
        async with contextlib.AsyncExitStack() as transaction:
            # Where DDL commits by itself, one transaction of the whole run would record no
            # revision until its end, though each revision's tables are there: a run failing
            # (or killed) in the second would leave the first's, unrecorded, and every later
            # run failing to make them again. There Alembic begins one per revision.
            if not rules.commits_ddl:
                await _begin(transaction, connection, schema, seconds)
            yield
    except BaseException:
        # The error is the one to tell; a lock not released ends with the session.
        with contextlib.suppress(Exception):
            await _release(connection, name)
        raise
    await _release(connection, name)


async def _begin(
    transaction: contextlib.AsyncExitStack,
    connection: AsyncConnection,
    schema: str | None,
    seconds: float,
) -> None:
    try:
        await transaction.enter_async_context(connection.begin())
    except DBAPIError as error:
        # SQLite: BEGIN IMMEDIATE waited out its busy timeout for the write lock.
        if backend(connection.dialect.name).error_kind(error.orig) != "conflict":
            raise
        raise _not_taken(False, schema, seconds) from None


async def _release(connection: AsyncConnection, name: str) -> None:
    await connection.run_sync(backend(connection.dialect.name).unlock_migrations, name)
    await connection.rollback()


def _not_taken(taken: bool | None, schema: str | None, seconds: float) -> Exception:
    from alembic.util import CommandError

    where = "this database" if schema is None else f"the schema {schema!r}"
    if taken is None:
        message = (
            f"The server reported an error taking the lock that keeps two migrations of "
            f"{where} from running at once; nothing was migrated. Run the command again."
        )
    else:
        message = (
            f"Waited {seconds:g} s for the lock that keeps two migrations of {where} from "
            "running at once, and another session still holds it (another deploy or instance "
            "migrating, or a migration stuck waiting); nothing was migrated. Run the command "
            "again once that migration is done, or end the session that holds the lock."
        )
    return CommandError(message)
