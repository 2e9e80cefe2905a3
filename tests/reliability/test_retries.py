"""Conflicting units of work are re-run from the start: real write skews, real deadlocks.

Two transactions start together and overlap through an ``asyncio.Barrier`` that only their
first attempts wait on: both read, then both write. Under SERIALIZABLE, PostgreSQL aborts one
of them with a serialization failure (SQLSTATE 40001) and MariaDB reports the same skew as a
deadlock (1213); two transactions locking two rows in opposite orders deadlock on either
(40P01, 1213). Retries are counted twice: by ``Retrying.retries`` and by the WARNING lines of
the "dbscope" logger, and printed (``pytest -s``).

No ``from __future__ import annotations``: the endpoints use a ``Session`` alias built inside
a function.
"""

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import Database, RetriesExhaustedError, Retrying
from tests.helpers import admin, client_for

SERVER_BACKENDS = ["asyncpg", "psycopg", "asyncmy"]
OVERLAP_TIMEOUT = 5.0
RecordProperty = Callable[[str, object], None]
TABLES = {
    "rt_ledger": "CREATE TABLE rt_ledger (amount INTEGER NOT NULL)",
    "rt_doctors": "CREATE TABLE rt_doctors (id INTEGER PRIMARY KEY, on_call INTEGER NOT NULL)",
    "rt_locks": "CREATE TABLE rt_locks (id INTEGER PRIMARY KEY, hits INTEGER NOT NULL)",
}


class InsufficientFunds(Exception):
    """The business error of a withdrawal larger than the balance."""


class LastDoctorOnCall(Exception):
    """The business error of the last on-call doctor trying to go off call."""


@pytest.fixture
async def retry_tables(database_url: str) -> AsyncIterator[None]:
    """Fresh ``rt_*`` tables: a ledger of 100, two doctors on call, two lockable rows."""
    async with admin(database_url) as connection:
        for name, create in TABLES.items():
            await connection.execute(text(f"DROP TABLE IF EXISTS {name}"))
            await connection.execute(text(create))
        await connection.execute(text("INSERT INTO rt_ledger (amount) VALUES (100)"))
        await connection.execute(text("INSERT INTO rt_doctors (id, on_call) VALUES (1, 1), (2, 1)"))
        await connection.execute(text("INSERT INTO rt_locks (id, hits) VALUES (1, 0), (2, 0)"))
    yield
    async with admin(database_url) as connection:
        for name in TABLES:
            await connection.execute(text(f"DROP TABLE {name}"))


async def overlap(barrier: asyncio.Barrier) -> None:
    """Wait until the other transaction has reached the same point."""
    async with asyncio.timeout(OVERLAP_TIMEOUT):
        await barrier.wait()


async def read_balance(session: AsyncSession) -> int:
    """The ledger's balance, read in ``session``'s transaction."""
    return int(await session.scalar(text("SELECT COALESCE(SUM(amount), 0) FROM rt_ledger")) or 0)


async def withdraw(retrying: Retrying, amount: int, barrier: asyncio.Barrier) -> None:
    """Read the balance, wait for the other withdrawal to read it too, then withdraw."""
    async for attempt in retrying:
        async with attempt as session:
            balance = await read_balance(session)
            if attempt.number == 1:
                await overlap(barrier)
            if balance < amount:
                raise InsufficientFunds(f"balance {balance} < {amount}")
            insert = text("INSERT INTO rt_ledger (amount) VALUES (:amount)")
            await session.execute(insert, {"amount": -amount})


async def go_off_call(retrying: Retrying, doctor: int, barrier: asyncio.Barrier) -> None:
    """Go off call if another doctor is still on call (read, overlap, then write)."""
    async for attempt in retrying:
        async with attempt as session:
            count = text("SELECT count(*) FROM rt_doctors WHERE on_call = 1")
            on_call = int(await session.scalar(count) or 0)
            if attempt.number == 1:
                await overlap(barrier)
            if on_call < 2:
                raise LastDoctorOnCall(f"doctor {doctor} is the last one on call")
            update = text("UPDATE rt_doctors SET on_call = 0 WHERE id = :id")
            await session.execute(update, {"id": doctor})


async def lock_in_order(
    retrying: Retrying, first: int, second: int, barrier: asyncio.Barrier
) -> None:
    """Lock row ``first``, wait for the other transaction to lock its row, lock ``second``."""
    update = text("UPDATE rt_locks SET hits = hits + 1 WHERE id = :id")
    async for attempt in retrying:
        async with attempt as session:
            await session.execute(update, {"id": first})
            if attempt.number == 1:
                await overlap(barrier)
            await session.execute(update, {"id": second})


async def scalar(db: Database, query: str) -> int:
    """The single integer ``query`` returns, read in a unit of work of its own."""
    async with db.transaction() as session:
        return int(await session.scalar(text(query)) or 0)


async def insert_existing_row(retrying: Retrying, attempts: list[int]) -> None:
    """Insert the row ``rt_locks`` already has, noting each attempt's number."""
    async for attempt in retrying:
        async with attempt as session:
            attempts.append(attempt.number)
            await session.execute(text("INSERT INTO rt_locks (id, hits) VALUES (1, 0)"))


def retry_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The WARNING lines dbscope logged for retries."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "dbscope"
        and record.levelno == logging.WARNING
        and record.getMessage().startswith("Retrying")
    ]


@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
@pytest.mark.usefixtures("retry_tables")
async def test_a_write_skew_is_retried_once_and_both_withdrawals_commit(
    database_url: str,
    db_backend: str,
    caplog: pytest.LogCaptureFixture,
    record_property: RecordProperty,
) -> None:
    """Two overlapping SERIALIZABLE withdrawals from one balance both commit, one retried."""
    caplog.set_level(logging.WARNING, logger="dbscope")
    async with Database(database_url, isolation_level="SERIALIZABLE") as db:
        barrier = asyncio.Barrier(2)
        retryings = [db.retrying(attempts=5, backoff=0.01) for _ in range(2)]
        await asyncio.gather(*(withdraw(retrying, 30, barrier) for retrying in retryings))
        balance = await scalar(db, "SELECT SUM(amount) FROM rt_ledger")
        rows = await scalar(db, "SELECT count(*) FROM rt_ledger")
        checked_out = db.stats().checked_out
    retries = sum(retrying.retries for retrying in retryings)
    lines = retry_lines(caplog)
    print(f"\n[{db_backend}] write skew, both succeed: retries={retries} log lines={lines}")
    record_property("retries", retries)
    assert (balance, rows) == (40, 3)
    assert retries == 1
    assert len(lines) == 1
    assert checked_out == 0


@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
@pytest.mark.usefixtures("retry_tables")
async def test_a_write_skew_retried_once_ends_in_the_business_error(
    database_url: str,
    db_backend: str,
    caplog: pytest.LogCaptureFixture,
    record_property: RecordProperty,
) -> None:
    """Of two on-call doctors going off call together, the retried one meets the rule."""
    caplog.set_level(logging.WARNING, logger="dbscope")
    async with Database(database_url, isolation_level="SERIALIZABLE") as db:
        barrier = asyncio.Barrier(2)
        retryings = [db.retrying(attempts=5, backoff=0.01) for _ in range(2)]
        outcomes = await asyncio.gather(
            go_off_call(retryings[0], 1, barrier),
            go_off_call(retryings[1], 2, barrier),
            return_exceptions=True,
        )
        on_call = await scalar(db, "SELECT count(*) FROM rt_doctors WHERE on_call = 1")
    retries = sum(retrying.retries for retrying in retryings)
    lines = retry_lines(caplog)
    print(f"\n[{db_backend}] write skew, business error: retries={retries} outcomes={outcomes}")
    record_property("retries", retries)
    assert sorted(type(outcome).__name__ for outcome in outcomes) == [
        "LastDoctorOnCall",
        "NoneType",
    ]
    assert on_call == 1
    assert retries == 1
    assert len(lines) == 1


@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
@pytest.mark.usefixtures("retry_tables")
async def test_a_deadlock_is_retried_once_and_both_transactions_commit(
    database_url: str,
    db_backend: str,
    caplog: pytest.LogCaptureFixture,
    record_property: RecordProperty,
) -> None:
    """Two transactions locking two rows in opposite orders both commit after one retry."""
    caplog.set_level(logging.WARNING, logger="dbscope")
    async with Database(database_url) as db:
        barrier = asyncio.Barrier(2)
        retryings = [db.retrying(attempts=3, backoff=0.01) for _ in range(2)]
        await asyncio.gather(
            lock_in_order(retryings[0], 1, 2, barrier),
            lock_in_order(retryings[1], 2, 1, barrier),
        )
        hits = await scalar(db, "SELECT SUM(hits) FROM rt_locks")
        checked_out = db.stats().checked_out
    retries = sum(retrying.retries for retrying in retryings)
    lines = retry_lines(caplog)
    print(f"\n[{db_backend}] deadlock: retries={retries} log lines={lines}")
    record_property("retries", retries)
    assert hits == 4  # both transactions added 1 to both rows, the retried one only once
    assert retries == 1
    assert len(lines) == 1
    if db_backend != "asyncmy":  # MariaDB's deadlock carries SQLSTATE 40001 as well
        assert "deadlock" in lines[0]
    assert checked_out == 0


@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
@pytest.mark.usefixtures("retry_tables")
async def test_a_conflict_on_the_only_attempt_raises_retries_exhausted(
    database_url: str, db_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With attempts=1, the transaction that loses the write skew ends in the error."""
    caplog.set_level(logging.WARNING, logger="dbscope")
    async with Database(database_url, isolation_level="SERIALIZABLE") as db:
        barrier = asyncio.Barrier(2)
        retryings = [db.retrying(attempts=1) for _ in range(2)]
        outcomes = await asyncio.gather(
            *(withdraw(retrying, 30, barrier) for retrying in retryings), return_exceptions=True
        )
        balance = await scalar(db, "SELECT SUM(amount) FROM rt_ledger")
    errors = [outcome for outcome in outcomes if outcome is not None]
    print(f"\n[{db_backend}] attempts=1: outcomes={outcomes}")
    assert len(errors) == 1
    assert isinstance(errors[0], RetriesExhaustedError)
    assert errors[0].attempts == 1
    assert isinstance(errors[0].__cause__, DBAPIError)
    assert balance == 70
    assert [retrying.retries for retrying in retryings] == [0, 0]
    assert retry_lines(caplog) == []


@pytest.mark.usefixtures("retry_tables")
async def test_a_non_retryable_error_propagates_unchanged_from_the_first_attempt(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A duplicate key is no conflict: IntegrityError at once, one attempt, no retry logged."""
    caplog.set_level(logging.WARNING, logger="dbscope")
    async with Database(database_url) as db:
        retrying = db.retrying(attempts=5, backoff=0)
        attempts: list[int] = []
        with pytest.raises(IntegrityError):
            await insert_existing_row(retrying, attempts)
        assert db.stats().checked_out == 0
    assert attempts == [1]
    assert retrying.retries == 0
    assert retry_lines(caplog) == []


def build_app(db: Database, attempts: int) -> FastAPI:
    """``POST /withdrawals/{name}`` withdraws 30 at SERIALIZABLE, retried by ``@db.retry``.

    The first run of each request waits for the other request to have read the balance, so
    two concurrent requests form a write skew. ``app.state.levels`` collects the isolation
    level each run saw.
    """
    app = FastAPI()
    app.state.barrier = asyncio.Barrier(2)
    app.state.runs = Counter()
    app.state.levels = []
    Session = Annotated[AsyncSession, Depends(db.session_with(isolation_level="SERIALIZABLE"))]
    isolation_query = (
        "SHOW transaction_isolation"
        if db.url.get_backend_name() == "postgresql"
        else "SELECT @@tx_isolation"
    )

    @app.post("/withdrawals/{name}")
    @db.retry(attempts=attempts, backoff=0.01)
    async def post_withdrawal(name: str, session: Session) -> dict[str, int]:
        app.state.runs[name] += 1
        level = str(await session.scalar(text(isolation_query)))
        app.state.levels.append(level.upper().replace("-", " "))
        balance = await read_balance(session)
        if app.state.runs[name] == 1:
            await overlap(app.state.barrier)
        insert = text("INSERT INTO rt_ledger (amount) VALUES (:amount)")
        await session.execute(insert, {"amount": -30})
        return {"balance": balance - 30}

    return app


async def post_two_withdrawals(app: FastAPI) -> list[httpx.Response]:
    """POST two overlapping withdrawals; the responses in order of status code."""
    async with client_for(app) as client:
        responses = await asyncio.gather(
            client.post("/withdrawals/a"), client.post("/withdrawals/b")
        )
    return sorted(responses, key=lambda response: response.status_code)


@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
@pytest.mark.usefixtures("retry_tables")
async def test_a_retried_endpoint_answers_409_when_its_only_attempt_conflicts(
    database_url: str,
) -> None:
    """@db.retry(attempts=1): of two overlapping requests one commits, one gets 409."""
    async with Database(database_url) as db:
        responses = await post_two_withdrawals(build_app(db, attempts=1))
        balance = await scalar(db, "SELECT SUM(amount) FROM rt_ledger")
        assert db.stats().checked_out == 0
    assert [response.status_code for response in responses] == [200, 409], [
        response.text for response in responses
    ]
    detail = responses[1].json()["detail"]
    assert detail["cause"] == "conflict"
    assert detail["message"]
    assert balance == 70


@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
@pytest.mark.usefixtures("retry_tables")
async def test_a_retried_endpoint_commits_both_conflicting_requests(
    database_url: str,
    db_backend: str,
    caplog: pytest.LogCaptureFixture,
    record_property: RecordProperty,
) -> None:
    """@db.retry(attempts=3): both overlapping requests get 200, after one logged retry."""
    caplog.set_level(logging.WARNING, logger="dbscope")
    async with Database(database_url) as db:
        app = build_app(db, attempts=3)
        responses = await post_two_withdrawals(app)
        balance = await scalar(db, "SELECT SUM(amount) FROM rt_ledger")
    lines = retry_lines(caplog)
    print(f"\n[{db_backend}] @db.retry: runs={dict(app.state.runs)} log lines={lines}")
    record_property("retries", len(lines))
    assert [response.status_code for response in responses] == [200, 200], [
        response.text for response in responses
    ]
    assert balance == 40
    assert sum(app.state.runs.values()) == 3
    assert len(lines) == 1
    assert "post_withdrawal" in lines[0]


@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
@pytest.mark.usefixtures("retry_tables")
async def test_every_attempt_of_a_retried_endpoint_runs_at_the_requested_isolation_level(
    database_url: str,
) -> None:
    """The retry of a SERIALIZABLE request (session_with) is SERIALIZABLE too."""
    async with Database(database_url) as db:
        app = build_app(db, attempts=3)
        responses = await post_two_withdrawals(app)
    assert [response.status_code for response in responses] == [200, 200]
    assert len(app.state.levels) == 3
    assert app.state.levels == ["SERIALIZABLE"] * 3
