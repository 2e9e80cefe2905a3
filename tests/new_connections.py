"""A pool that opens a new connection at every checkout, for the tests that cancel units
while they open one (tests/reliability/test_cancel*.py).

SQLAlchemy's ``pool_recycle=0`` did it, and dbscope refuses 0 (other pools read it as "no
limit"). The same is done through SQLAlchemy's public pool API: each connection is
soft-invalidated as it is checked out (``ConnectionPoolEntry.invalidate(soft=True)``), so
that its next checkout closes it and opens another, on the very path ``pool_recycle`` takes
(``_ConnectionRecord.get_connection``'s recycle). Not a NullPool: the pool stays dbscope's
wait line, the connection is closed at the next checkout, not at the unit's end.
"""

import contextlib
from typing import Any

from sqlalchemy import event
from sqlalchemy.pool import ConnectionPoolEntry

from dbscope import Database


def _replaced_at_next_checkout(
    dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any
) -> None:
    record.invalidate(soft=True)


async def new_connection_at_each_checkout(db: Database) -> None:
    """From now on, each checkout of ``db`` (connected) closes its connection and opens a new
    one; those pooled already (the one connect() opened) are marked so by a checkout now."""
    event.listen(db.engine.sync_engine, "checkout", _replaced_at_next_checkout)
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(db.stats().checked_in):
            await stack.enter_async_context(db.engine.connect())
