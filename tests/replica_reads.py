"""Helpers of the replica tests (tests/test_replicas*.py; their fixtures are in
tests/replica_fixtures.py): a Database over the real pair, and where a unit really ran.

A unit's own ``SELECT pg_is_in_recovery()`` says where it ran (:func:`in_recovery`), and
``db.stats().replicas[0].served`` (:func:`served`) that dbscope counted it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import Database
from tests.helpers import admin
from tests.replica_cluster import wait_for_replay

DATABASE = os.environ.get("DBSCOPE_TEST_REPLICA_DATABASE", "test")
TABLE = "items"
# Short, so that a state change shows within a test: the checks are one query each.
CHECK_INTERVAL = 0.1
# A role that may not call the function dbscope reads the primary's position with.
CAPTURE_ROLE = "dbscope_capture_fails"
CAPTURE_FUNCTION = "pg_catalog.pg_current_wal_insert_lsn()"


@contextlib.asynccontextmanager
async def replicated(urls: tuple[str, str], **options: Any) -> AsyncIterator[Database]:
    """A connected Database on the primary, with the replica; ``options`` as for Database."""
    primary, replica = urls
    options.setdefault("replica_check_interval", CHECK_INTERVAL)
    async with Database(primary, replicas=[replica], **options) as db:
        yield db


def another_name(url: str | URL) -> str:
    """``url`` with its host spelt otherwise (127.0.0.1 as localhost, and back): the same
    server, which a replica URL may name only so (the primary's own URL is refused)."""
    parsed = make_url(url)
    host = "127.0.0.1" if parsed.host == "localhost" else "localhost"
    return parsed.set(host=host).render_as_string(hide_password=False)


async def in_recovery(session: AsyncSession) -> bool:
    """Whether ``session``'s unit runs on a server in recovery: a replica."""
    return bool(await session.scalar(text("SELECT pg_is_in_recovery()")))


async def has_item(session: AsyncSession, item: int) -> bool:
    """Whether the unit of ``session`` sees the item ``item``."""
    query = text(f"SELECT count(*) FROM {TABLE} WHERE id = :id")
    return bool(await session.scalar(query, {"id": item}))


async def on_replica_and_sees(session: AsyncSession, item: int) -> tuple[bool, bool]:
    """Whether ``session``'s unit runs on a replica, and whether it sees the item ``item``."""
    return await in_recovery(session), await has_item(session, item)


async def add_item(db: Database, item: int) -> None:
    """Write the item ``item`` in a unit of its own, on the primary."""
    async with db.transaction() as session:
        await session.execute(text(f"INSERT INTO {TABLE} (id) VALUES (:id)"), {"id": item})


def served(db: Database) -> int:
    """The read-only units the (first) replica has served."""
    return db.stats().replicas[0].served


def fallbacks(db: Database) -> dict[str, int]:
    """The read-only units that ran on the primary instead, by why."""
    return dict(db.stats().fallbacks)


@contextlib.asynccontextmanager
async def capture_refused(urls: tuple[str, str]) -> AsyncIterator[tuple[str, str]]:
    """The URLs as a role that may not call pg_current_wal_insert_lsn() in the database."""
    async with admin(urls[0]) as connection:
        await connection.execute(text(f"DROP ROLE IF EXISTS {CAPTURE_ROLE}"))
        await connection.execute(text(f"CREATE ROLE {CAPTURE_ROLE} LOGIN"))
        await connection.execute(text(f"GRANT ALL ON {TABLE} TO {CAPTURE_ROLE}"))
        await connection.execute(text(f"REVOKE EXECUTE ON FUNCTION {CAPTURE_FUNCTION} FROM PUBLIC"))
        try:
            await wait_for_replay(*urls)
            yield (
                make_url(urls[0]).set(username=CAPTURE_ROLE).render_as_string(False),
                make_url(urls[1]).set(username=CAPTURE_ROLE).render_as_string(False),
            )
        finally:
            await connection.execute(
                text(f"GRANT EXECUTE ON FUNCTION {CAPTURE_FUNCTION} TO PUBLIC")
            )
            await connection.execute(text(f"DROP OWNED BY {CAPTURE_ROLE}"))
            await connection.execute(text(f"DROP ROLE {CAPTURE_ROLE}"))


async def capture_allowed(primary: str) -> None:
    """Every role may call pg_current_wal_insert_lsn() again, as before capture_refused()."""
    async with admin(primary) as connection:
        await connection.execute(text(f"GRANT EXECUTE ON FUNCTION {CAPTURE_FUNCTION} TO PUBLIC"))
