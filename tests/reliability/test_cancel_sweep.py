"""A unit of work cancelled after any number of its steps leaves nothing behind.

The unit (read, write a row of its own tag, commit; through ``db.transaction()``,
``db.retrying()`` or a request of a FastAPI app) runs uncancelled and its steps are counted:
each time the loop runs its task. Then for each n from 0 up it runs again, takes n steps and
is cancelled (``task.cancel()``, or an ``asyncio.timeout()`` or anyio ``move_on_after()``
expiring around it), twice: with the awaited work under way, and once its result is in but
before the task resumes, where Python 3.11's ``asyncio.wait_for`` lost a cancel. Loop
iterations are no measure (12 to 3,804 for one unit, most waiting for the server); steps are.
After each point (check_point): nothing checked out, no transaction open on the server, a
cancel never swallowed, the next unit fine, the row as the unit's end says, nothing reported.
Counts only, never how long anything took. The machinery is tests/cancel_points.py's;
tests/reliability/test_cancel_sweep_more.py sweeps what this module leaves out.
"""

import contextlib
from collections.abc import AsyncIterator

import pytest

from dbscope import Database
from dbscope.testing import client
from tests.cancel_points import Sweep, Unit, open_sweep, run_sweep, write_row
from tests.helpers import Tables, app_with


@contextlib.asynccontextmanager
async def entry_point(db: Database, entry: str) -> AsyncIterator[Unit]:
    """The unit as ``async with db.transaction()``, as an attempt of ``db.retrying()`` (a
    cancel is no conflict to retry), or as a request's (``db.session``) through the app
    in-process: cancelling the task that sends it cancels the app, as a server does."""

    async def in_transaction(tag: str) -> bool:
        async with db.transaction() as session:
            await write_row(session, tag)
        return True

    async def in_retrying(tag: str) -> bool:
        async for attempt in db.retrying(attempts=2):
            async with attempt as session:
                await write_row(session, tag)
        return True

    app = app_with(db.session, {"POST /rows/{tag}": write_row})
    async with client(app) as http:

        async def in_request(tag: str) -> bool:
            response = await http.post(f"/rows/{tag}")
            assert response.status_code == 200, response.text
            return True

        yield {"transaction": in_transaction, "retrying": in_retrying}.get(entry, in_request)


@pytest.fixture
async def sweep(database_url: str, db_backend: str, tables: Tables) -> AsyncIterator[Sweep]:
    """A Database of one connection on the test's ``cs_rows``, its commits counted."""
    async with open_sweep(database_url, db_backend, tables) as state:
        yield state


@pytest.mark.parametrize("entry", ["transaction", "retrying", "request"])
async def test_a_unit_cancelled_after_any_number_of_steps_leaves_nothing_behind(
    sweep: Sweep, entry: str
) -> None:
    """``task.cancel()`` after each number of steps of a unit writing a row, on each
    entry point: no connection kept, no transaction open, the next unit fine, the row as the
    unit's end says, the cancel never swallowed."""
    await run_sweep(sweep, entry_point(sweep.db, entry), entry, "cancel")


@pytest.mark.parametrize("cause", ["asyncio_timeout", "anyio_move_on_after"])
async def test_a_transaction_cut_short_by_a_timeout_at_any_step_leaves_nothing_behind(
    sweep: Sweep, cause: str
) -> None:
    """A timeout around ``db.transaction()`` expiring after each number of steps (the
    way apps cancel): the same guarantees; asyncio's ends in TimeoutError, anyio's cancel
    scope cancels again at each await until the block is left."""
    await run_sweep(sweep, entry_point(sweep.db, "transaction"), "transaction", cause)
