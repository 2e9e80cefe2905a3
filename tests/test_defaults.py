"""The defaults dbscope chooses per database, observed on real servers and files."""

import socket
from collections.abc import Iterator

import anyio
import pytest
from sqlalchemy import Column, ForeignKey, Integer, String, Table, insert, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dbscope import Database, DatabaseUnavailableError
from tests.helpers import app_with, send

MEMORY_URL = "sqlite+aiosqlite:///:memory:"


class Base(DeclarativeBase):
    """This file's own metadata."""


class Item(Base):
    """A row with a server-generated key, read after its transaction has ended."""

    __tablename__ = "defaults_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


# A foreign key, in Core: the orphan row is inserted as a plain INSERT.
parents = Table("defaults_parents", Base.metadata, Column("id", Integer, primary_key=True))
children = Table(
    "defaults_children",
    Base.metadata,
    Column("id", Integer, primary_key=True),
    Column("parent_id", ForeignKey(parents.c.id), nullable=False),
)


async def create_tables(db: Database) -> None:
    """(Re)create this file's tables."""
    async with db.engine.begin() as connection:
        await connection.run_sync(Base.metadata.drop_all)
        await connection.run_sync(Base.metadata.create_all)


async def drop_tables(db: Database) -> None:
    """Drop this file's tables."""
    async with db.engine.begin() as connection:
        await connection.run_sync(Base.metadata.drop_all)


async def scalar(db: Database, sql: str) -> object:
    """The single value ``sql`` returns, read in its own transaction."""
    async with db.transaction() as session:
        return (await session.execute(text(sql))).scalar_one()


# -- every database ---------------------------------------------------------------------------


async def test_objects_stay_readable_after_their_transaction_commits(database_url: str) -> None:
    """expire_on_commit is off: a committed object's attributes read without a session."""
    db = Database(database_url)
    async with db:
        await create_tables(db)
        try:
            async with db.transaction() as session:
                item = Item(name="kept")
                session.add(item)
            # The session is closed: an expired attribute would raise DetachedInstanceError.
            assert item.name == "kept"
            assert isinstance(item.id, int)
        finally:
            await drop_tables(db)


async def test_connections_are_checked_before_use_by_default(database_url: str) -> None:
    """Every server's connections are checked before use (pinged once idle); SQLite's not."""
    db = Database(database_url, pool_size=1, max_overflow=0, pool_pre_ping_after=0)
    async with db:
        for _ in range(3):
            async with db.transaction() as session:
                await session.execute(text("SELECT 1"))
        pinged = db.stats().pinged
    assert pinged == (0 if database_url.startswith("sqlite") else 3)  # connect()'s too


# -- SQLite -----------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["file", "memory"])
async def test_sqlite_enforces_foreign_keys(where: str, sqlite_url: str) -> None:
    """An orphan row fails with IntegrityError, in a file and in memory."""
    db = Database(sqlite_url if where == "file" else MEMORY_URL)
    async with db:
        await create_tables(db)
        with pytest.raises(IntegrityError):
            async with db.transaction() as session:
                await session.execute(insert(children).values(parent_id=42))
        assert await scalar(db, "SELECT count(*) FROM defaults_children") == 0
        await drop_tables(db)


async def test_a_sqlite_file_is_in_wal_mode(sqlite_url: str) -> None:
    """A file database runs in write-ahead-log mode, its WAL cut back to 64 MiB after a
    checkpoint (it grows while a long reader holds checkpoints off)."""
    db = Database(sqlite_url)
    async with db:
        assert await scalar(db, "PRAGMA journal_mode") == "wal"
        assert await scalar(db, "PRAGMA journal_size_limit") == 64 * 1024 * 1024


async def test_in_memory_sqlite_is_one_database_across_the_app() -> None:
    """A table made in one transaction is there in the next and in a request."""
    db = Database(MEMORY_URL)

    async def count(session: AsyncSession) -> int:
        return int((await session.execute(text("SELECT count(*) FROM shared"))).scalar_one())

    app = app_with(db.session, {"GET /count": count}, lifespan=db.lifespan)
    async with app.router.lifespan_context(app):
        async with db.transaction() as session:
            await session.execute(text("CREATE TABLE shared (value INTEGER)"))
            await session.execute(text("INSERT INTO shared (value) VALUES (1)"))
        in_transaction = await scalar(db, "SELECT count(*) FROM shared")
        response = await send(app, "GET /count")
    assert in_transaction == 1
    assert response.json() == 1


# -- MariaDB / MySQL --------------------------------------------------------------------------


async def test_mysql_connections_are_recycled_before_the_server_drops_them(
    mysql_url: str,
) -> None:
    """pool_recycle is positive and below the server's real @@wait_timeout."""
    db = Database(mysql_url)
    async with db:
        wait_timeout = int(str(await scalar(db, "SELECT @@wait_timeout")))
        recycle = db.engine.pool._recycle
    assert 0 < recycle < wait_timeout


@pytest.mark.parametrize("db_backend", ["asyncpg"])
async def test_server_settings_given_keep_the_application_name(database_url: str) -> None:
    """asyncpg's server_settings of the user's (a time zone) and dbscope's application name
    both reach the server: the user's mapping replaced dbscope's before."""
    given = {"server_settings": {"TimeZone": "Asia/Tokyo"}}
    query = "SELECT current_setting('application_name'), current_setting('TimeZone')"
    async with (
        Database(database_url, application_name="zoned", connect_args=given) as db,
        db.transaction() as session,
    ):
        seen = tuple((await session.execute(text(query))).one())
    assert seen == ("zoned", "Asia/Tokyo")


async def test_a_mysql_recycle_longer_than_wait_timeout_is_shortened(mysql_url: str) -> None:
    """An explicit pool_recycle beyond @@wait_timeout is brought below it at connect()."""
    db = Database(mysql_url, pool_recycle=10_000_000)
    async with db:
        wait_timeout = int(str(await scalar(db, "SELECT @@wait_timeout")))
        recycle = db.engine.pool._recycle
    assert 0 < recycle < wait_timeout


# -- connect timeout --------------------------------------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel's backlog) and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


@pytest.mark.parametrize(
    "drivername", ["postgresql+asyncpg", "postgresql+psycopg", "mysql+asyncmy"]
)
async def test_connecting_to_a_silent_server_gives_up(drivername: str, silent_server: int) -> None:
    """connect() to a server that never answers fails as unavailable instead of hanging."""
    db = Database(f"{drivername}://app@127.0.0.1:{silent_server}/app", connect_timeout=1)
    hung = "connect() was still waiting after 15 s, despite connect_timeout=1"
    with anyio.fail_after(15, reason=hung), pytest.raises(DatabaseUnavailableError) as info:
        await db.connect()
    assert f"127.0.0.1:{silent_server}" in str(info.value)
