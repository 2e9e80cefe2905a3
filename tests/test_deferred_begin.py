"""When a unit's transaction begins on PostgreSQL: at its first statement that is not a plain read.

The witness is the server: from a connection of the test's own, ``pg_stat_activity`` says
whether the unit's backend (found by its application_name) has a transaction open. A unit
that only reads never has one; its first write (or any statement that needs a transaction)
opens it, and a failure after that rolls the writes back.
"""

import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest
from sqlalchemy import (
    ColumnElement,
    ForeignKey,
    Integer,
    column,
    event,
    func,
    make_url,
    select,
    table,
    text,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncResult, AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dbscope import Database
from tests import helpers
from tests.conftest import POSTGRES_DRIVERS
from tests.documented import block_containing, run_async_block
from tests.driver_connections import in_transaction as driver_in_transaction

pytestmark = pytest.mark.parametrize("db_backend", POSTGRES_DRIVERS)

ACTIVITY = text(
    "SELECT count(*), count(xact_start) FROM pg_stat_activity WHERE application_name = :name"
)


class Base(DeclarativeBase):
    """The tables of these tests."""


class Account(Base):
    """An account, read and written by the units."""

    __tablename__ = "db_accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    balance: Mapped[int]


class Entry(Base):
    """A ledger entry of an account: a second table, for writes after reads."""

    __tablename__ = "db_entries"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("db_accounts.id"))


@pytest.fixture
async def accounts(tables: helpers.Tables, database_url: str) -> None:
    """Two accounts, 1 and 2, and no entries."""
    await tables.create_all(Base.metadata)
    async with helpers.admin(database_url) as connection:
        await connection.execute(text("INSERT INTO db_accounts VALUES (1, 100), (2, 50)"))


@pytest.fixture
async def db(database_url: str, accounts: None) -> AsyncIterator[Database]:
    """A Database whose connections the server lists under a name of the test's own."""
    async with Database(database_url, application_name=_unique_name()) as database:
        yield database


def _unique_name() -> str:
    return f"deferred-{uuid.uuid4().hex[:12]}"


async def in_transaction(db: Database) -> bool:
    """Whether the server has a transaction open on ``db``'s one checked-out connection."""
    name = db.settings.application_name
    async with helpers.admin(db.url.render_as_string(hide_password=False)) as connection:
        backends, open_transactions = (await connection.execute(ACTIVITY, {"name": name})).one()
    assert backends >= 1, f"no backend named {name!r}: the test looks in the wrong place"
    return bool(open_transactions)


async def test_a_unit_that_only_reads_opens_no_transaction(db: Database) -> None:
    async with db.transaction() as session:
        account = await session.get(Account, 1)
        total = await session.scalar(select(func.sum(Account.balance)))
        assert (account.balance if account else None, total) == (100, 150)
        assert not await in_transaction(db)


async def test_the_first_write_opens_the_transaction_and_a_failure_rolls_it_back(
    db: Database, database_url: str
) -> None:
    class Refused(Exception):
        pass

    async def write_then_fail() -> None:
        async with db.transaction() as session:
            account = await session.get(Account, 1)
            assert account is not None
            assert not await in_transaction(db)
            account.balance -= 30
            session.add(Entry(id=1, account_id=1))
            await session.flush()
            assert await in_transaction(db)
            await session.get(Account, 2)  # a read after the write: in the transaction
            raise Refused

    with pytest.raises(Refused):
        await write_then_fail()
    assert await helpers.stored(db, "SELECT balance FROM db_accounts ORDER BY id") == [100, 50]
    assert await helpers.count_rows(database_url, "db_entries") == 0


async def test_a_unit_that_reads_then_writes_commits_everything(db: Database) -> None:
    async with db.transaction() as session:
        account = await session.get(Account, 2)
        assert account is not None
        account.balance += 5
    assert await helpers.stored(db, "SELECT balance FROM db_accounts ORDER BY id") == [100, 55]


class BackendPid(ColumnElement[int]):
    """``pg_backend_pid()``, as an application's own construct renders it."""

    inherit_cache = True
    type = Integer()


@compiles(BackendPid)
def _render_backend_pid(element: BackendPid, compiler: Any, **kw: Any) -> str:
    return "pg_backend_pid()"


async def read_all(stream: Awaitable[AsyncResult[Any]]) -> None:
    """Read a stream to its end (which closes its cursor)."""
    await (await stream).all()


async def read_in_savepoint(session: AsyncSession) -> None:
    """Read in a savepoint (which SQLAlchemy opens at the first statement in it)."""
    await session.begin_nested()
    await session.execute(select(Account))


NEEDS_A_TRANSACTION: dict[str, Any] = {
    "SQL text": lambda session: session.execute(text("SELECT 1")),
    "now()": lambda session: session.scalar(select(func.now())),
    "a function of the application's": lambda session: session.scalar(
        select(func.pg_backend_pid())
    ),
    "a function in a schema, with a pure function's name": lambda session: session.scalar(
        select(func.pg_catalog.count(Account.id))
    ),
    "a construct of the application's": lambda session: session.scalar(select(BackendPid())),
    "a locking read": lambda session: session.get(Account, 1, with_for_update=True),
    "a locking read in SQL text": lambda session: session.execute(
        select(Account).where(Account.id == 1).suffix_with("FOR UPDATE SKIP LOCKED")
    ),
    "a CTE that locks": lambda session: session.execute(
        select(Account.id).where(
            Account.id.in_(select(select(Account.id).with_for_update().cte().c.id))
        )
    ),
    "a write in a CTE": lambda session: session.execute(
        select(func.count()).select_from(
            update(Account).where(Account.id == 1).values(balance=0).returning(Account.id).cte()
        )
    ),
    "a stream's cursor": lambda session: read_all(session.stream(select(Account))),
    "a read in a savepoint": lambda session: read_in_savepoint(session),
}


@pytest.mark.parametrize("statement", NEEDS_A_TRANSACTION.values(), ids=NEEDS_A_TRANSACTION)
async def test_a_statement_that_is_not_a_plain_read_opens_the_transaction(
    db: Database, statement: Any
) -> None:
    async with db.transaction() as session:
        await session.get(Account, 2)
        assert not await in_transaction(db)
        await statement(session)
        assert await in_transaction(db)


@pytest.mark.parametrize(
    ("database_options", "unit_options"),
    [
        ({"defer_begin": False}, {}),
        ({}, {"isolation_level": "REPEATABLE READ"}),
        ({"isolation_level": "REPEATABLE READ"}, {}),
        ({}, {"schema": "public"}),
        ({}, {"statement_timeout": 5}),
    ],
    ids=[
        "defer_begin=False",
        "the unit's REPEATABLE READ",
        "the engine's REPEATABLE READ",
        "schema",
        "statement_timeout",
    ],
)
async def test_these_units_open_the_transaction_at_their_first_statement(
    database_url: str, accounts: None, database_options: Any, unit_options: Any
) -> None:
    name = _unique_name()
    async with (
        Database(database_url, application_name=name, **database_options) as db,
        db.transaction(**unit_options) as session,
    ):
        await session.get(Account, 1)
        assert await in_transaction(db)


async def test_a_server_whose_default_level_is_not_read_committed_keeps_begin_first(
    database_url: str,
) -> None:
    # A database of its own, whose sessions begin REPEATABLE READ unless told otherwise:
    # dbscope reads that default at its first connection.
    name = f"dbscope_rr_{uuid.uuid4().hex[:8]}"
    url = make_url(database_url)
    server = url.set(database="postgres").render_as_string(hide_password=False)
    async with helpers.admin(server) as admin:
        await admin.execute(text(f"CREATE DATABASE {name}"))
        await admin.execute(
            text(f"ALTER DATABASE {name} SET default_transaction_isolation = 'repeatable read'")
        )
    try:
        async with (
            Database(url.set(database=name), application_name=_unique_name()) as db,
            db.transaction() as session,
        ):
            await session.execute(select(column("oid")).select_from(table("pg_namespace")))
            assert await in_transaction(db)
    finally:
        async with helpers.admin(server) as admin:
            await admin.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))


async def test_a_connection_that_only_read_goes_back_to_the_pool_as_it_came(
    database_url: str, accounts: None
) -> None:
    name = _unique_name()
    async with Database(database_url, pool_size=1, max_overflow=0, application_name=name) as db:
        async with db.transaction() as session:
            await session.get(Account, 1)
        # The same connection, used by the engine's own user: its write is rolled back.
        async with db.engine.connect() as connection:
            await connection.execute(text("UPDATE db_accounts SET balance = 0"))
            assert await in_transaction(db)
            await connection.rollback()
        assert await helpers.stored(db, "SELECT balance FROM db_accounts ORDER BY id") == [100, 50]


async def test_a_request_that_only_reads_opens_no_transaction(db: Database) -> None:
    async def balance(session: AsyncSession) -> dict[str, Any]:
        account = await session.get(Account, 1)
        return {"balance": account.balance if account else None, "open": await in_transaction(db)}

    app = helpers.app_with(db.session, {"GET /balance": balance})
    async with helpers.client_for(app) as client:
        response = await client.get("/balance")
    assert response.json() == {"balance": 100, "open": False}


async def test_the_documented_unit_reads_outside_and_writes_inside_the_transaction(
    db: Database, database_url: str
) -> None:
    code = block_containing("docs/units-of-work.md", "# a plain read: no transaction yet")
    after_each: list[tuple[str, bool]] = []

    def note(connection: Connection, cursor: Any, statement: str, *_: Any) -> None:
        in_transaction = driver_in_transaction(connection.connection.driver_connection)
        after_each.append((statement.split()[0], in_transaction))

    engine = db.engine.sync_engine
    event.listen(engine, "after_cursor_execute", note)
    try:
        await run_async_block(code, {"db": db, "Account": Account, "Entry": Entry})
    finally:
        event.remove(engine, "after_cursor_execute", note)
    assert after_each == [("SELECT", False), ("UPDATE", True), ("INSERT", True)]
    assert await helpers.stored(db, "SELECT balance FROM db_accounts ORDER BY id") == [70, 50]
    assert await helpers.count_rows(database_url, "db_entries") == 1
