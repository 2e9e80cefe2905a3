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
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import Attempt, Database, RetriesExhaustedError, Retrying
from tests.helpers import Tables, admin, client_for

SERVER_BACKENDS = ["asyncpg", "psycopg", "asyncmy"]
OVERLAP_TIMEOUT = 5.0
RecordProperty = Callable[[str, object], None]
Racer = Callable[[Retrying, asyncio.Barrier], Awaitable[None]]

pytestmark = pytest.mark.usefixtures("retry_tables")


class InsufficientFunds(Exception):
    """The business error of a withdrawal larger than the balance."""


class LastDoctorOnCall(Exception):
    """The business error of the last on-call doctor trying to go off call."""


@pytest.fixture
async def retry_tables(database_url: str, tables: Tables) -> None:
    """Fresh ``rt_*`` tables: a ledger of 100, two doctors on call, two lockable rows."""
    await tables.create("rt_ledger", "amount INTEGER NOT NULL")
    await tables.create("rt_doctors", "id INTEGER PRIMARY KEY, on_call INTEGER NOT NULL")
    await tables.create("rt_locks", "id INTEGER PRIMARY KEY, hits INTEGER NOT NULL")
    async with admin(database_url) as connection:
        await connection.execute(text("INSERT INTO rt_ledger (amount) VALUES (100)"))
        await connection.execute(text("INSERT INTO rt_doctors (id, on_call) VALUES (1, 1), (2, 1)"))
        await connection.execute(text("INSERT INTO rt_locks (id, hits) VALUES (1, 0), (2, 0)"))


@pytest.fixture(autouse=True)
def retry_warnings(caplog: pytest.LogCaptureFixture) -> None:
    """Capture the WARNING lines of the "dbscope" logger, where retries are logged."""
    caplog.set_level(logging.WARNING, logger="dbscope")


async def overlap(barrier: asyncio.Barrier) -> None:
    """Wait until the other transaction has reached the same point."""
    async with asyncio.timeout(OVERLAP_TIMEOUT):
        await barrier.wait()


@contextlib.asynccontextmanager
async def ending_together(attempt: Attempt, barrier: asyncio.Barrier) -> AsyncIterator[None]:
    """After a first attempt has ended (committed, failed or given up), wait until the
    other racer's first attempt has ended too: the barrier's second round.

    A retry then never overlaps the winner's commit, which would make it conflict again (two
    retries instead of one, now and then, on a busy machine).
    """
    try:
        yield
    finally:
        if attempt.number == 1:
            await overlap(barrier)


async def read_balance(session: AsyncSession) -> int:
    """The ledger's balance, read in ``session``'s transaction."""
    return int(await session.scalar(text("SELECT COALESCE(SUM(amount), 0) FROM rt_ledger")) or 0)


async def withdraw(retrying: Retrying, amount: int, barrier: asyncio.Barrier) -> None:
    """Read the balance, wait for the other withdrawal to read it too, then withdraw."""
    async for attempt in retrying:
        async with ending_together(attempt, barrier), attempt as session:
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
        async with ending_together(attempt, barrier), attempt as session:
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
        async with ending_together(attempt, barrier), attempt as session:
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


@dataclass
class Race:
    """What two overlapping units of work came to.

    Attributes:
        outcomes: what each racer raised (None if it finished).
        retries: how often each racer's Retrying re-ran its unit.
        values: what the queries gave, read once both had ended.
        checked_out: the connections still checked out then.
        lines: the WARNING lines dbscope logged for retries.
    """

    outcomes: list[BaseException | None]
    retries: list[int]
    values: list[int]
    checked_out: int
    lines: list[str]


class Racing:
    """Runs two racers together on the test's database; see :meth:`__call__`."""

    def __init__(
        self,
        database_url: str,
        caplog: pytest.LogCaptureFixture,
        record_property: RecordProperty,
    ) -> None:
        self.database_url = database_url
        self.caplog = caplog
        self.record_property = record_property

    async def __call__(
        self,
        what: str,
        racers: tuple[Racer, Racer],
        *queries: str,
        attempts: int,
        isolation_level: str | None = "SERIALIZABLE",
    ) -> Race:
        """Run the two racers together, each with a Retrying of its own and one barrier
        between them; then read ``queries``, each in a unit of work of its own. The figures
        are printed (``pytest -s``) as ``what``."""
        options = {} if isolation_level is None else {"isolation_level": isolation_level}
        async with Database(self.database_url, **options) as db:
            barrier = asyncio.Barrier(2)
            retryings = [db.retrying(attempts=attempts, backoff=0.01) for _ in range(2)]
            outcomes = await asyncio.gather(
                *(
                    racer(retrying, barrier)
                    for racer, retrying in zip(racers, retryings, strict=True)
                ),
                return_exceptions=True,
            )
            values = [await scalar(db, query) for query in queries]
            checked_out = db.stats().checked_out
        retries = [retrying.retries for retrying in retryings]
        race = Race(outcomes, retries, values, checked_out, retry_lines(self.caplog))
        print(f"\n[{db.url.get_driver_name()}] {what}: {race}")
        self.record_property("retries", sum(race.retries))
        return race


@pytest.fixture
def racing(
    database_url: str, caplog: pytest.LogCaptureFixture, record_property: RecordProperty
) -> Racing:
    """Two racers run together on the test's database, their figures printed and recorded."""
    return Racing(database_url, caplog, record_property)


def withdrawing(amount: int) -> Racer:
    """A racer that withdraws ``amount``."""
    return lambda retrying, barrier: withdraw(retrying, amount, barrier)


def going_off_call(doctor: int) -> Racer:
    """A racer that takes ``doctor`` off call."""
    return lambda retrying, barrier: go_off_call(retrying, doctor, barrier)


def locking(first: int, second: int) -> Racer:
    """A racer that locks row ``first``, then row ``second``."""
    return lambda retrying, barrier: lock_in_order(retrying, first, second, barrier)


BALANCE = "SELECT SUM(amount) FROM rt_ledger"


@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
async def test_a_write_skew_is_retried_once_and_both_withdrawals_commit(racing: Racing) -> None:
    """Two overlapping SERIALIZABLE withdrawals from one balance both commit, one retried."""
    rows = "SELECT count(*) FROM rt_ledger"
    withdrawals = (withdrawing(30), withdrawing(30))
    race = await racing("write skew, both succeed", withdrawals, BALANCE, rows, attempts=5)
    assert race.outcomes == [None, None]
    assert race.values == [40, 3]
    assert sum(race.retries) == 1
    assert len(race.lines) == 1
    assert race.checked_out == 0


@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
async def test_a_write_skew_retried_once_ends_in_the_business_error(racing: Racing) -> None:
    """Of two on-call doctors going off call together, the retried one meets the rule."""
    on_call = "SELECT count(*) FROM rt_doctors WHERE on_call = 1"
    doctors = (going_off_call(1), going_off_call(2))
    race = await racing("write skew, business error", doctors, on_call, attempts=5)
    assert sorted(type(outcome).__name__ for outcome in race.outcomes) == [
        "LastDoctorOnCall",
        "NoneType",
    ]
    assert race.values == [1]
    assert sum(race.retries) == 1
    assert len(race.lines) == 1


@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
async def test_a_deadlock_is_retried_once_and_both_transactions_commit(
    racing: Racing, db_backend: str
) -> None:
    """Two transactions locking two rows in opposite orders both commit after one retry."""
    hits = "SELECT SUM(hits) FROM rt_locks"
    lockers = (locking(1, 2), locking(2, 1))
    race = await racing("deadlock", lockers, hits, attempts=3, isolation_level=None)
    assert race.outcomes == [None, None]
    assert race.values == [4]  # both transactions added 1 to both rows, the retried one once
    assert sum(race.retries) == 1
    assert len(race.lines) == 1
    if db_backend != "asyncmy":  # MariaDB's deadlock carries SQLSTATE 40001 as well
        assert "deadlock" in race.lines[0]
    assert race.checked_out == 0


@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
async def test_a_conflict_on_the_only_attempt_raises_retries_exhausted(racing: Racing) -> None:
    """With attempts=1, the transaction that loses the write skew ends in the error."""
    race = await racing("attempts=1", (withdrawing(30), withdrawing(30)), BALANCE, attempts=1)
    errors = [outcome for outcome in race.outcomes if outcome is not None]
    assert len(errors) == 1
    assert isinstance(errors[0], RetriesExhaustedError)
    assert errors[0].attempts == 1
    assert isinstance(errors[0].__cause__, DBAPIError)
    assert race.values == [70]
    assert race.retries == [0, 0]
    assert race.lines == []


async def test_a_non_retryable_error_propagates_unchanged_from_the_first_attempt(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A duplicate key is no conflict: IntegrityError at once, one attempt, no retry logged."""
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


async def post_two_withdrawals(
    db: Database, attempts: int
) -> tuple[FastAPI, list[httpx.Response], int]:
    """POST two overlapping withdrawals to ``build_app(db, attempts)``: the app, the responses
    in order of status code, and the balance once both have ended."""
    app = build_app(db, attempts)
    async with client_for(app) as client:
        responses = await asyncio.gather(
            client.post("/withdrawals/a"), client.post("/withdrawals/b")
        )
    balance = await scalar(db, BALANCE)
    return app, sorted(responses, key=lambda response: response.status_code), balance


def statuses(responses: list[httpx.Response]) -> list[int]:
    """The responses' status codes."""
    return [response.status_code for response in responses]


@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
async def test_a_retried_endpoint_answers_409_when_its_only_attempt_conflicts(
    db: Database,
) -> None:
    """@db.retry(attempts=1): of two overlapping requests one commits, one gets 409."""
    _, responses, balance = await post_two_withdrawals(db, attempts=1)
    assert db.stats().checked_out == 0
    assert statuses(responses) == [200, 409], [response.text for response in responses]
    detail = responses[1].json()["detail"]
    assert detail["cause"] == "conflict"
    assert detail["message"]
    assert balance == 70


@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
async def test_a_retried_endpoint_commits_both_conflicting_requests(
    db: Database,
    db_backend: str,
    caplog: pytest.LogCaptureFixture,
    record_property: RecordProperty,
) -> None:
    """@db.retry(attempts=3): both overlapping requests get 200, after one logged retry."""
    app, responses, balance = await post_two_withdrawals(db, attempts=3)
    lines = retry_lines(caplog)
    print(f"\n[{db_backend}] @db.retry: runs={dict(app.state.runs)} log lines={lines}")
    record_property("retries", len(lines))
    assert statuses(responses) == [200, 200], [response.text for response in responses]
    assert balance == 40
    assert sum(app.state.runs.values()) == 3
    assert len(lines) == 1
    assert "post_withdrawal" in lines[0]


@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
async def test_every_attempt_of_a_retried_endpoint_runs_at_the_requested_isolation_level(
    db: Database,
) -> None:
    """The retry of a SERIALIZABLE request (session_with) is SERIALIZABLE too."""
    app, responses, _ = await post_two_withdrawals(db, attempts=3)
    assert statuses(responses) == [200, 200]
    assert len(app.state.levels) == 3
    assert app.state.levels == ["SERIALIZABLE"] * 3
