"""Per-unit options: statement timeout and isolation level, and nothing left behind.

Options are set per ``db.transaction(...)`` or per request (``db.session_with(...)``), and
must end with their unit: with ``pool_size=1`` the next unit gets the very same connection (its
backend id proves it), and finds the server's defaults there. Read-only units are in
test_read_only.py.

No ``from __future__ import annotations``: the endpoints use a ``Session`` alias built inside
a function.
"""

import contextlib
import gc
import time
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import ConfigurationError, Database, StatementTimeoutError, UnitOptions
from dbscope._unit_options import IsolationLevel
from tests import helpers

ONE_CONNECTION: dict[str, Any] = {"pool_size": 1, "max_overflow": 0}
TIMEOUT = 0.2
SLOW = 2.0


def slow_query(db: Database) -> str:
    """A statement that runs SLOW seconds on this backend."""
    if db.url.get_backend_name() == "postgresql":
        return f"SELECT pg_sleep({SLOW})"
    return f"SELECT SLEEP({SLOW})"


def backend_id_query(db: Database) -> str:
    """The query naming the server connection (backend) the session runs on."""
    return helpers.BACKEND_ID[db.url.get_backend_name()]


def timeout_query(db: Database) -> str:
    """The query giving the statement timeout in force; '0' / 0 means none."""
    if db.url.get_backend_name() == "postgresql":
        return "SHOW statement_timeout"
    return "SELECT @@max_statement_time"


def isolation_query(db: Database) -> str:
    """The query giving the isolation level in force, on PostgreSQL or MariaDB."""
    if db.url.get_backend_name() == "postgresql":
        return "SHOW transaction_isolation"
    return "SELECT @@tx_isolation"


def level_name(value: object) -> str:
    """'serializable' and 'SERIALIZABLE', 'repeatable read' and 'REPEATABLE-READ' alike."""
    return str(value).upper().replace("-", " ")


async def connection_state(db: Database, **options: Any) -> tuple[Any, Any]:
    """The backend id and the statement timeout a new unit of work with ``options`` finds."""
    async with db.transaction(**options) as session:
        backend = await session.scalar(text(backend_id_query(db)))
        timeout = await session.scalar(text(timeout_query(db)))
    return backend, timeout


def is_default_timeout(value: object) -> bool:
    """Whether ``value`` is the server's 'no statement timeout'."""
    return str(value) == "0" or value == 0


async def run_slow_query(db: Database, backends: list[Any], *, commit_first: bool = False) -> None:
    """In a unit with a TIMEOUT statement timeout: note the backend id, then run a SLOW query.

    With ``commit_first``, the unit commits a first transaction before the slow query.
    """
    async with db.transaction(statement_timeout=TIMEOUT) as session:
        backends.append(await session.scalar(text(backend_id_query(db))))
        if commit_first:
            await session.commit()
        await session.execute(text(slow_query(db)))


# -- statement timeout ------------------------------------------------------------------------


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_a_statement_running_past_the_units_timeout_raises_statement_timeout(
    database_url: str,
) -> None:
    """A 2 s statement in a unit with statement_timeout=0.2 is cut short with the error."""
    async with Database(database_url) as db:
        started = time.monotonic()
        with pytest.raises(StatementTimeoutError):
            await run_slow_query(db, [])
        elapsed = time.monotonic() - started
        assert db.stats().checked_out == 0
    assert elapsed < SLOW / 2


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_the_connection_is_healthy_and_back_to_no_timeout_after_a_statement_timeout(
    database_url: str,
) -> None:
    """The same pooled connection serves the next unit, without the timeout, not replaced."""
    async with Database(database_url, **ONE_CONNECTION) as db:
        backends: list[Any] = []
        with pytest.raises(StatementTimeoutError):
            await run_slow_query(db, backends)
        backend, timeout = await connection_state(db)
        invalidated = db.stats().invalidated
    assert backends == [backend]
    assert is_default_timeout(timeout), timeout
    assert invalidated == 0


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_a_statement_timeout_does_not_outlive_a_unit_that_succeeds(
    database_url: str,
) -> None:
    """After a unit with a timeout commits, the next unit on its connection has none."""
    async with Database(database_url, **ONE_CONNECTION) as db:
        timed_backend, inside = await connection_state(db, statement_timeout=TIMEOUT)
        backend, timeout = await connection_state(db)
    assert not is_default_timeout(inside)
    assert backend == timed_backend
    assert is_default_timeout(timeout), timeout


async def test_units_with_ever_new_statement_timeouts_keep_no_options_each(
    postgres_url: str,
) -> None:
    """An app that gives each unit its request's remaining deadline as statement_timeout
    makes new options per unit: they are not all kept (before: one kept per unit, for good)."""
    units = 600
    async with Database(postgres_url, **ONE_CONNECTION) as db:
        for number in range(units):
            async with db.transaction(statement_timeout=10 + number / 1000) as session:
                await session.execute(text("SELECT 1"))
        gc.collect()
        kept = sum(
            isinstance(held, UnitOptions) and held.statement_timeout is not None
            for held in gc.get_objects()
        )
    assert kept < units // 2


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_a_statement_timeout_holds_after_a_mid_unit_commit(database_url: str) -> None:
    """The timeout applies to the unit's next transaction as well."""
    async with Database(database_url) as db:
        with pytest.raises(StatementTimeoutError):
            await run_slow_query(db, [], commit_first=True)


def build_timeout_app(db: Database) -> FastAPI:
    """``/slow`` runs under a 0.2 s statement timeout; ``/state`` reads the connection."""

    async def slow(session: AsyncSession) -> dict[str, str]:
        await session.execute(text(slow_query(db)))
        return {"status": "finished"}

    async def state(session: Annotated[AsyncSession, Depends(db.session)]) -> dict[str, str]:
        backend = await session.scalar(text(backend_id_query(db)))
        timeout = await session.scalar(text(timeout_query(db)))
        return {"backend": str(backend), "timeout": str(timeout)}

    app = helpers.app_with(db.session_with(statement_timeout=TIMEOUT), {"GET /slow": slow})
    app.add_api_route("/state", state, methods=["GET"])
    return app


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_a_request_past_its_statement_timeout_answers_504(database_url: str) -> None:
    """session_with(statement_timeout=0.2) turns a 2 s query into 504 statement_timeout."""
    async with Database(database_url, **ONE_CONNECTION) as db:
        async with helpers.client_for(build_timeout_app(db)) as client:
            before = (await client.get("/state")).json()
            started = time.monotonic()
            response = await client.get("/slow")
            elapsed = time.monotonic() - started
            after = (await client.get("/state")).json()
        assert db.stats().checked_out == 0
    assert response.status_code == 504, response.text
    detail = response.json()["detail"]
    assert detail["cause"] == "statement_timeout"
    assert detail["message"]
    assert elapsed < SLOW / 2
    assert after == before  # the same connection, with the server's default timeout


async def test_sqlite_refuses_a_statement_timeout(sqlite_url: str) -> None:
    """SQLite cannot cancel a statement: both forms raise ConfigurationError."""
    async with Database(sqlite_url) as db:
        with pytest.raises(ConfigurationError):
            db.session_with(statement_timeout=1)
        with pytest.raises(ConfigurationError):
            async with db.transaction(statement_timeout=1):
                pass


# -- isolation level --------------------------------------------------------------------------


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
@pytest.mark.parametrize("level", ["SERIALIZABLE", "REPEATABLE READ"])
async def test_a_transaction_runs_at_the_isolation_level_it_asks_for(
    database_url: str, level: IsolationLevel
) -> None:
    """Inside the unit the server reports the level; the next unit is back to the default."""
    async with Database(database_url, **ONE_CONNECTION) as db:
        async with db.transaction() as session:
            default = level_name(await session.scalar(text(isolation_query(db))))
        async with db.transaction(isolation_level=level) as session:
            inside = level_name(await session.scalar(text(isolation_query(db))))
        async with db.transaction() as session:
            after = level_name(await session.scalar(text(isolation_query(db))))
    assert inside == level
    assert after == default


async def test_sqlite_runs_a_transaction_read_uncommitted_when_asked(sqlite_url: str) -> None:
    """READ UNCOMMITTED turns on SQLite's read_uncommitted pragma for that unit only."""
    async with Database(sqlite_url, **ONE_CONNECTION) as db:
        async with db.transaction(isolation_level="READ UNCOMMITTED") as session:
            inside = await session.scalar(text("PRAGMA read_uncommitted"))
        async with db.transaction() as session:
            after = await session.scalar(text("PRAGMA read_uncommitted"))
    assert (inside, after) == (1, 0)


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_the_isolation_level_holds_after_a_mid_unit_commit(database_url: str) -> None:
    """The unit's next transaction, after ``session.commit()``, runs at the same level."""
    async with (
        Database(database_url) as db,
        db.transaction(isolation_level="SERIALIZABLE") as session,
    ):
        first = level_name(await session.scalar(text(isolation_query(db))))
        await session.commit()
        second = level_name(await session.scalar(text(isolation_query(db))))
    assert (first, second) == ("SERIALIZABLE", "SERIALIZABLE")


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"statement_timeout": 0}, id="statement_timeout-0"),
        pytest.param({"statement_timeout": -1}, id="statement_timeout-negative"),
        pytest.param({"isolation_level": "SNAPSHOT"}, id="isolation_level-SNAPSHOT"),
        pytest.param({"isolation_level": "serialisable"}, id="isolation_level-serialisable"),
        pytest.param({"isolation_level": ""}, id="isolation_level-empty"),
    ],
)
async def test_an_option_out_of_its_range_is_a_configuration_error(
    database_url: str, options: dict[str, Any]
) -> None:
    """A statement timeout of 0 or below, or a level that is not one of the four standard
    ones, is refused in both forms: when the dependency is made, and by a transaction."""
    async with Database(database_url) as db:
        with pytest.raises(ConfigurationError):
            db.session_with(**options)
        with pytest.raises(ConfigurationError):
            async with db.transaction(**options):
                pass


@pytest.mark.parametrize(
    ("db_backend", "level"),
    [("sqlite", "REPEATABLE READ"), ("sqlite", "READ COMMITTED"), ("asyncpg", "READ UNCOMMITTED")],
)
async def test_an_isolation_level_the_backend_refuses_is_a_configuration_error(
    database_url: str, level: IsolationLevel
) -> None:
    """A standard level this backend's driver rejects is refused like an unknown one."""
    async with Database(database_url) as db:
        with pytest.raises(ConfigurationError, match=level):
            async with db.transaction(isolation_level=level):
                pass
        assert db.stats().checked_out == 0


async def test_the_same_options_give_the_same_dependency(database_url: str) -> None:
    """One dependency per set of options, so one request shares one session; none is db.session."""
    db = Database(database_url)
    assert db.session_with() is db.session
    assert db.session_with(read_only=True) is db.read_session
    assert db.session_with(isolation_level="SERIALIZABLE") is db.session_with(
        isolation_level="SERIALIZABLE"
    )


@pytest.mark.parametrize("db_backend", ["asyncmy"])
@pytest.mark.parametrize("timed_out", [False, True])
async def test_a_units_statement_timeout_puts_back_the_sessions_own_on_mariadb(
    database_url: str, timed_out: bool
) -> None:
    """A connection whose session has a max_statement_time of its own (here an init_command;
    a user's MAX_STATEMENT_TIME alike) has it again after a unit with statement_timeout, timed
    out or not (before: DEFAULT, the global 0, for the rest of the connection's life)."""
    url = f"{database_url}?init_command=SET+SESSION+max_statement_time%3D7"
    async with Database(url, pool_size=1, max_overflow=0) as db:
        with contextlib.suppress(StatementTimeoutError):
            async with db.transaction(statement_timeout=0.2) as session:
                await session.execute(text("SELECT SLEEP(1)" if timed_out else "SELECT 1"))
        async with db.transaction() as session:
            after = await session.scalar(text("SELECT @@SESSION.max_statement_time"))
            backend = await session.scalar(text("SELECT CONNECTION_ID()"))
        async with db.transaction() as session:
            same = await session.scalar(text("SELECT CONNECTION_ID()"))
    assert float(after) == 7.0
    assert backend == same  # one connection all along


@pytest.mark.parametrize(
    ("url", "level"),
    [
        ("postgresql+asyncpg://app@localhost/app", "READ UNCOMMITTED"),
        ("sqlite+aiosqlite:///app.db", "REPEATABLE READ"),
    ],
)
def test_a_level_the_drivers_adapter_lacks_is_refused_where_the_unit_is_declared(
    url: str, level: IsolationLevel
) -> None:
    """Before connect() only the standard four were known: session_with() took the level at
    import, and every request answered 500."""
    db = Database(url)
    with pytest.raises(ConfigurationError, match=f"isolation_level='{level}' is not available"):
        db.session_with(isolation_level=level)
