"""The event listeners of PostgreSQL's engines: a primary demoted under the pool, and the
server told to check on its clients."""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy.engine import ExceptionContext
from sqlalchemy.pool import ConnectionPoolEntry

from dbscope._dialects.driver import Driver
from dbscope._dialects.postgresql_drivers import ASYNCPG, PSYCOPG, sqlstate

DRIVERS: Final[dict[str, Driver]] = {ASYNCPG.name: ASYNCPG, PSYCOPG.name: PSYCOPG}
# A write in a read-only transaction: a unit that writes meets it on a standby (a primary
# demoted by a failover, or a URL that names a standby).
READ_ONLY_SQL_TRANSACTION: Final = "25006"
# On a pooled connection's info, from the BEGIN of a unit that writes to its checkin.
WRITES: Final = "dbscope.writes"


def demoted_primary(context: ExceptionContext) -> None:
    """A write refused as read-only in a unit that writes: the server is a standby now (a
    failover demoted it while the pool kept connections to it, or the URL names a standby).

    Handled as a lost connection: SQLAlchemy drops this connection and every one the pool
    opened before it, so the next checkouts connect anew and, through a multi-host URL with
    ``target_session_attrs=read-write``, find the new primary. A read-only unit's refusal is
    its own doing, and so is one from a server that says it is no standby (a role with
    ``default_transaction_read_only``): both stay the application's errors.
    """
    connection = context.connection
    if context.is_disconnect or connection is None or connection.invalidated:
        return
    if sqlstate(context.original_exception) != READ_ONLY_SQL_TRANSACTION:
        return
    if not connection.info.get(WRITES):
        return
    dbapi_connection = connection.connection.dbapi_connection
    known = DRIVERS.get(connection.dialect.driver)
    said = None
    if dbapi_connection is not None and known is not None:
        said = known.hot_standby(dbapi_connection.driver_connection)
    context.is_disconnect = said is not False


def forget_writes(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    record.info.pop(WRITES, None)


def check_client_connection(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    # A query whose request was cancelled has its connection closed by SQLAlchemy, but the
    # server runs the query to its end unless it checks on the client (PostgreSQL 14+):
    # cancelled requests would pile up running backends. The WHERE keeps older servers,
    # which lack the setting, out of it.
    cursor = dbapi_connection.cursor()
    cursor.execute(
        "SELECT set_config('client_connection_check_interval', '100', false) "
        "WHERE current_setting('server_version_num')::int >= 140000"
    )
    cursor.close()
    dbapi_connection.commit()  # the drivers opened a transaction; a rollback would undo it
