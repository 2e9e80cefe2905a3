"""The run's own database is dropped at its end even while a session is left in it.

A test that never closes its connection leaves a session in the run's database, in a
transaction that holds locks on the app's tables. PostgreSQL's ``DROP DATABASE ... WITH
(FORCE)`` ends such sessions; on MariaDB dbscope ends them itself before the drop, which
would otherwise wait for their locks and then be refused. The session here is a command-line
client's, reading a table and sleeping inside its transaction.
"""

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, Table
from sqlalchemy.engine import make_url

from dbscope import testing
from tests.conftest import url_for

from .run_databases import database_exists, drop_database, on_server, run_database

metadata = MetaData()
Table("tos_notes", metadata, Column("id", Integer, primary_key=True))


@pytest.fixture(params=["asyncpg", "asyncmy"])
def server_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A PostgreSQL and a MariaDB URL in turn, with no run database of theirs left."""
    url = url_for(str(request.param), tmp_path)
    drop_database(run_database(url))
    yield url
    drop_database(run_database(url))


def hold_a_transaction_in(url: str) -> subprocess.Popen[bytes]:
    """A client's session in ``url``'s database, in a transaction that read tos_notes, asleep
    for a minute; started, and returned once the server shows it asleep."""
    parsed = make_url(url)
    name = parsed.database or ""
    reading = "BEGIN; SELECT * FROM tos_notes; "
    if parsed.get_backend_name() == "postgresql":
        command = ["psql", "-h", str(parsed.host), "-p", str(parsed.port or 5432)]
        command += ["-U", str(parsed.username), "-d", name, "-c", reading + "SELECT pg_sleep(60)"]
        asleep = (
            f"SELECT 1 FROM pg_stat_activity WHERE datname = '{name}' AND query LIKE '%sleep(60)'"
        )
    else:
        command = ["mariadb", "-h", str(parsed.host), "-P", str(parsed.port or 3306)]
        command += ["-u", str(parsed.username), name, "-e", reading + "SELECT SLEEP(60)"]
        asleep = (
            "SELECT 1 FROM information_schema.processlist "
            f"WHERE db = '{name}' AND info LIKE '%SLEEP(60)'"
        )
    holder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):  # until the client is connected and inside its transaction
        if on_server(url, asleep):
            return holder
        time.sleep(0.05)
    holder.kill()
    holder.wait()
    pytest.fail(f"the client never showed in the server's session list: {command}")


def test_the_runs_database_is_dropped_with_a_session_left_in_it(server_url: str) -> None:
    """The session is ended, the database is gone, and leaving the block raises nothing."""
    holders: list[subprocess.Popen[bytes]] = []
    try:
        with testing.own_database(server_url, metadata=metadata) as url:
            holders.append(hold_a_transaction_in(url))
        ended = holders[0].wait(timeout=50)  # far sooner than its minute's sleep
    finally:
        for holder in holders:
            if holder.poll() is None:
                holder.kill()
    assert ended != 0  # its session was ended under it
    assert not database_exists(run_database(server_url))
