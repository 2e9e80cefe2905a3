"""Conflicting units of work are re-run from the start: real write skews, real deadlocks.

Two transactions start together and overlap through an ``asyncio.Barrier`` that only their
first attempts wait on: both read, then both write. Under SERIALIZABLE, PostgreSQL aborts one
of them with a serialization failure (SQLSTATE 40001) and MariaDB reports the same skew as a
deadlock (1213); two transactions locking two rows in opposite orders deadlock on either
(40P01, 1213). Retries are counted twice: by ``Retrying.retries`` and by the WARNING lines of
the "dbscope" logger, and printed (``pytest -s``). The same conflicts in requests, retried
by ``@db.retry``, are in test_retries_http.py.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError

from dbscope import Attempt, Database, RetriesExhaustedError, Retrying
from tests.helpers import SERVER_BACKENDS, Tables, admin
from tests.reliability.conflicts import BALANCE, overlap, read_balance, retry_lines, scalar

RecordProperty = Callable[[str, object], None]
Racer = Callable[[Retrying, asyncio.Barrier], Awaitable[None]]

pytestmark = pytest.mark.usefixtures("retry_tables", "retry_warnings")


class InsufficientFunds(Exception):
    """The business error of a withdrawal larger than the balance."""


class LastDoctorOnCall(Exception):
    """The business error of the last on-call doctor trying to go off call."""


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


async def insert_existing_row(retrying: Retrying, attempts: list[int]) -> None:
    """Insert the row ``rt_locks`` already has, noting each attempt's number."""
    async for attempt in retrying:
        async with attempt as session:
            attempts.append(attempt.number)
            await session.execute(text("INSERT INTO rt_locks (id, hits) VALUES (1, 0)"))


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
        options: dict[str, Any] = {}
        if isolation_level is not None:
            options["isolation_level"] = isolation_level
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


@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
async def test_a_deadlock_inside_a_savepoint_is_retried(database_url: str, tables: Tables) -> None:
    """Two units lock two rows in opposite orders, the second lock inside begin_nested(): one
    deadlocks. InnoDB rolls back the whole transaction, the savepoint with it, and the ROLLBACK
    TO SAVEPOINT that follows fails (1305): the deadlock under it is still a conflict, retried
    (before, on MariaDB: '1305 SAVEPOINT does not exist', never retried)."""
    await tables.create("rt_accounts", "id INTEGER PRIMARY KEY, balance INTEGER NOT NULL")
    async with admin(database_url) as connection:
        await connection.execute(text("INSERT INTO rt_accounts VALUES (1, 100), (2, 100)"))
    move = text("UPDATE rt_accounts SET balance = balance + :amount WHERE id = :id")
    barrier = asyncio.Barrier(2)
    runs = {"a": 0, "b": 0}
    async with Database(database_url, pool_size=4) as db:

        async def transfer(name: str, source: int, target: int) -> int:
            retrying = db.retrying(attempts=3, backoff=0.01)
            async for attempt in retrying:
                async with attempt as session:
                    runs[name] += 1
                    await session.execute(move, {"amount": -1, "id": source})
                    if runs[name] == 1:
                        await overlap(barrier)
                    async with session.begin_nested():
                        await session.execute(move, {"amount": 1, "id": target})
            return retrying.retries

        retries = await asyncio.gather(transfer("a", 1, 2), transfer("b", 2, 1))
        balances = await scalar(db, "SELECT SUM(balance) FROM rt_accounts")
    assert sorted(retries) == [0, 1]
    assert balances == 200
