"""What each kind of database error becomes: refusals are configuration errors, for good;
constraints that fail at COMMIT answer 409 naming the constraint; AUTOCOMMIT is refused."""

import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import CheckConstraint, String, UniqueConstraint, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import NullPool

from dbscope import ConfigurationError, ConstraintViolationError, Database
from dbscope.fastapi import _errors as fastapi_errors
from tests.helpers import SERVER_BACKENDS, Tables, admin, client_for, stored

# With MariaDB's own words for a key in it: its message names the key after the row's values.
SECRET_VALUE = "row-value-that-must-not-leak' for key 'leak"
# The summary of held-back lines comes 5 s after the first: the script waits for it, at most
# this long.
SUMMARY_WAIT = 30.0


@pytest.mark.parametrize(
    "setting",
    [{"isolation_level": "AUTOCOMMIT"}, {"execution_options": {"isolation_level": "autocommit"}}],
)
def test_an_autocommit_database_is_refused_at_construction(
    sqlite_url: str, setting: dict[str, Any]
) -> None:
    """AUTOCOMMIT for every connection would let a failed request keep its writes."""
    with pytest.raises(ConfigurationError) as refused:
        Database(sqlite_url, **setting)
    assert "db.lease()" in str(refused.value)
    assert "isolation_level=" in str(refused.value)


@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
async def test_a_database_that_does_not_exist_is_a_configuration_error(database_url: str) -> None:
    """Connecting to a missing database is a mistake to fix, not an outage to wait out."""
    missing = make_url(database_url).set(database="dbscope_no_such_database")
    db = Database(missing.render_as_string(hide_password=False))
    with pytest.raises(ConfigurationError, match="dbscope_no_such_database"):
        await db.connect()


@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
async def test_an_unknown_user_is_a_configuration_error(database_url: str) -> None:
    """A user the server does not know is refused for good, on every server."""
    stranger = make_url(database_url).set(username="dbscope_nobody", password="x")
    db = Database(stranger.render_as_string(hide_password=False))
    with pytest.raises(ConfigurationError, match="dbscope_nobody") as refused:
        await db.connect()
    assert "does not e***ist" not in str(refused.value)


@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
async def test_a_database_dropped_while_the_app_runs_answers_500_not_503(
    database_url: str,
) -> None:
    """A new connection refused at run time is a configuration error: 500, no Retry-After;
    for a unit of work and for a lease (whose driver errors SQLAlchemy does not wrap). The
    server's code is named where the driver has one (libpq gives psycopg's none)."""
    name = f"dbscope_gone_{uuid.uuid4().hex[:8]}"
    async with admin(database_url) as connection:
        await connection.execute(text(f"CREATE DATABASE {name}"))
    url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
    db = Database(url, poolclass=NullPool)  # every unit opens a new connection
    app = FastAPI()

    @app.get("/")
    async def read(session: Annotated[AsyncSession, Depends(db.session)]) -> int:
        return int((await session.execute(text("SELECT 1"))).scalar_one())

    async with db:
        async with admin(database_url) as connection:
            force = " WITH (FORCE)" if connection.dialect.name == "postgresql" else ""
            await connection.execute(text(f"DROP DATABASE {name}{force}"))
        async with client_for(app) as client:
            response = await client.get("/")
        with pytest.raises(ConfigurationError, match=name) as refused:
            async with db.transaction() as session:
                await session.execute(text("SELECT 1"))
        with pytest.raises(ConfigurationError, match=name):
            async with db.lease():
                pass
    codes = {"asyncpg": "(error 3D000: ", "asyncmy": "(error 1049: ", "psycopg": "(connection "}
    assert codes[make_url(url).get_driver_name()] in str(refused.value)
    assert response.status_code == 500
    assert "retry-after" not in response.headers


# -- constraints at COMMIT ----------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "err_items"
    __table_args__ = (UniqueConstraint("label", name="err_label"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(String(64))


class Account(Base):
    __tablename__ = "err_accounts"
    __table_args__ = (CheckConstraint("balance >= 0", name="err_positive"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    balance: Mapped[int]


class Note(Base):
    __tablename__ = "err_notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(64))  # NOT NULL


# Per constraint: the row there before (if any), the row the request adds, and the query of
# the values the table then holds. A failed CHECK is an OperationalError on asyncmy
# (MariaDB's 4025), not an IntegrityError: the verdict rests on the code.
AT_COMMIT: dict[str, tuple[Callable[[], list[Base]], Callable[[], Base], str]] = {
    "err_label": (
        lambda: [Item(id=1, label=SECRET_VALUE)],
        lambda: Item(id=2, label=SECRET_VALUE),
        "SELECT label FROM err_items",
    ),
    "err_positive": (list, lambda: Account(id=1, balance=-5), "SELECT balance FROM err_accounts"),
    "err_notes.body NOT NULL": (list, lambda: Note(id=1), "SELECT body FROM err_notes"),
}


def reported_name(constraint: str, database_url: str) -> str | None:
    """``constraint`` as the 409 names it: SQLite names no constraint, only a NULL's column,
    and MariaDB names that column without its table."""
    null_refused = constraint.endswith(" NOT NULL")
    if database_url.startswith("mysql") and null_refused:
        return constraint.partition(".")[2]
    if database_url.startswith("sqlite") and not null_refused:
        return None
    return constraint


@pytest.mark.parametrize("constraint", list(AT_COMMIT))
async def test_a_constraint_failing_at_commit_answers_409_naming_it(
    database_url: str, tables: Tables, constraint: str
) -> None:
    """A duplicate, a failed CHECK or a NULL in a NOT NULL column, flushed by the commit after
    the endpoint returned, answers 409 naming the constraint (or the column) and never the
    row's values; nothing is stored."""
    existing, added, query = AT_COMMIT[constraint]
    before = existing()
    await tables.create_all(Base.metadata)
    async with Database(database_url) as db:
        async with db.transaction() as session:
            session.add_all(before)
        app = FastAPI()

        @app.post("/rows")
        async def add(session: Annotated[AsyncSession, Depends(db.session)]) -> None:
            session.add(added())  # flushed by the COMMIT

        async with client_for(app) as client:
            response = await client.post("/rows")
        kept = await stored(db, query)
    assert response.status_code == 409, response.text
    body = response.json()["detail"]
    assert body["cause"] == "constraint_violation"
    assert body["constraint"] == reported_name(constraint, database_url)
    assert SECRET_VALUE not in response.text
    assert kept == [SECRET_VALUE] * len(before)


async def test_the_log_line_of_a_409_names_the_database_and_the_body_does_not(
    database_url: str,
    tables: Tables,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An app of two Databases tells them apart in its log: the warning of a constraint
    failing at a request's COMMIT names the Database (its pool_name); the body does not."""
    # A log of its own: the process's holds back a 409 that another test logged within 5 s.
    monkeypatch.setattr(fastapi_errors, "_error_log", fastapi_errors._ErrorLog(5.0))
    await tables.create_all(Base.metadata)
    async with Database(database_url, pool_name="billing") as db:
        app = FastAPI()

        @app.post("/rows")
        async def add(session: Annotated[AsyncSession, Depends(db.session)]) -> None:
            session.add_all([Item(id=1, label="same"), Item(id=2, label="same")])

        with caplog.at_level("WARNING", logger="dbscope"):
            async with client_for(app) as client:
                response = await client.post("/rows")
    logged = [
        r.getMessage() for r in caplog.records if "409 (constraint_violation)" in r.getMessage()
    ]
    assert response.status_code == 409
    assert len(logged) == 1
    assert logged[0].endswith("(Database 'billing')")
    assert "billing" not in response.text


async def test_a_check_failing_inside_the_endpoint_is_an_integrity_error_it_can_catch(
    database_url: str, tables: Tables
) -> None:
    """A CHECK violated by a flush in the endpoint raises IntegrityError there, on every
    backend (asyncmy raised MariaDB's 4025 as an OperationalError, past the except)."""
    await tables.create_all(Base.metadata)
    async with Database(database_url) as db:
        app = FastAPI()

        @app.post("/accounts")
        async def add(session: Annotated[AsyncSession, Depends(db.session)]) -> None:
            session.add(Account(id=1, balance=-5))
            try:
                await session.flush()
            except IntegrityError as error:
                raise HTTPException(422, "the balance may not be negative") from error

        async with client_for(app) as client:
            response = await client.post("/accounts")
    assert (response.status_code, response.json()) == (
        422,
        {"detail": "the balance may not be negative"},
    )


async def test_a_constraint_failing_at_the_end_of_a_transaction_is_still_an_integrity_error(
    database_url: str, tables: Tables
) -> None:
    """Outside requests the commit's violation is a ConstraintViolationError, which is also the
    IntegrityError scripts catch, and neither its message nor its repr holds a value."""
    await tables.create_all(Base.metadata)
    async with Database(database_url) as db:
        with pytest.raises(IntegrityError) as failed:
            async with db.transaction() as session:
                session.add_all([Item(id=1, label=SECRET_VALUE), Item(id=2, label=SECRET_VALUE)])
        labels = await stored(db, "SELECT label FROM err_items")
    assert isinstance(failed.value, ConstraintViolationError)
    assert SECRET_VALUE not in str(failed.value)
    assert SECRET_VALUE not in repr(failed.value)
    assert labels == []


# -- the log under overload -----------------------------------------------------------------------


BURST_SCRIPT = """
import asyncio, contextlib, logging, sys
from typing import Annotated
import httpx
from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from dbscope import Database

logging.basicConfig(level=logging.WARNING, format="%(name)s %(message)s", stream=sys.stdout)
db = Database(sys.argv[1], pool_size=1, max_overflow=0, pool_max_waiters=0)
app = FastAPI()

@app.get("/")
async def read(session: Annotated[AsyncSession, Depends(db.session)]) -> int:
    return int((await session.execute(text("SELECT 1"))).scalar_one())

async def get(number: int) -> int:
    # Each request from a client (address and port) of its own: 50 clients at once, none
    # of which comes back before its Retry-After, which would hold its request until then.
    transport = httpx.ASGITransport(app, client=("127.0.0.1", 20000 + number))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return (await client.get("/")).status_code

class Summary(logging.Handler):
    # Notes dbscope's line that sums up the answers held back.
    def __init__(self) -> None:
        super().__init__()
        self.logged = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "more times" in record.getMessage():
            self.logged.set()

async def main() -> None:
    summary = Summary()
    logging.getLogger("dbscope").addHandler(summary)
    async with db, db.transaction() as held:
        await held.execute(text("SELECT 1"))  # the only connection, held
        statuses = [await get(number) for number in range(50)]
        print("statuses", sorted(set(statuses)), len(statuses), flush=True)
        with contextlib.suppress(TimeoutError):  # none: the test's assertions say so
            await asyncio.wait_for(summary.logged.wait(), float(sys.argv[2]))

asyncio.run(main())
"""


def test_a_burst_of_503s_logs_one_line_then_one_summary(tmp_path: Path, sqlite_url: str) -> None:
    """50 requests (each from a client of its own) refused by a full wait line log one
    warning at once, then one line that counts the other 49 (in a process of its own, so no
    other test's 503 came before)."""
    script = tmp_path / "burst.py"
    script.write_text(BURST_SCRIPT)
    completed = subprocess.run(
        [sys.executable, str(script), sqlite_url, str(SUMMARY_WAIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = completed.stdout.splitlines()
    warnings = [line for line in lines if line.startswith("dbscope ")]
    assert "statuses [503] 50" in lines
    assert len(warnings) == 2, completed.stdout
    assert warnings[0].startswith("dbscope Answering 503 (pool_timeout): All database connections")
    assert "503 (pool_timeout) 49 more times" in warnings[1]
