"""Primary failover on a real two-node Patroni cluster (tests/patroni_cluster.py).

A multi-host URL (``?host=a&host=b&target_session_attrs=read-write``) reaches whichever node
is the primary, through asyncpg and psycopg; a write that reaches a standby (a demoted
primary) is a lost connection, answered 503, and the pool reconnects to the new primary; a
switchover costs the requests in flight at most a 503, and the application is back on the
new primary within one request; the durability report follows the cluster's
synchronous_mode and warns once without it; ``synchronous_commit="remote_apply"`` makes a
commit visible on the standby before the unit ends. The bank through a switchover and a
crash is test_failover_bank.py.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator

import anyio
import httpx
import pytest
from examples.bank.app import open_accounts
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import Database, DatabaseUnavailableError
from tests import helpers
from tests.documented import block_containing, run_block
from tests.patroni_cluster import PatroniCluster, alone, healthy
from tests.server import free_port, running_server

pytestmark = pytest.mark.patroni

WARNING = "acknowledged writes can be lost if this server fails"


@pytest.fixture(params=["asyncpg", "psycopg"])
def driver(request: pytest.FixtureRequest) -> str:
    """Each PostgreSQL driver in turn."""
    return str(request.param)


@pytest.fixture
def cluster(patroni: PatroniCluster) -> Iterator[PatroniCluster]:
    """The cluster, this test's alone among the cluster's tests meanwhile."""
    with alone():
        yield patroni


@pytest.fixture
async def synchronous(cluster: PatroniCluster) -> AsyncIterator[PatroniCluster]:
    """The cluster with a leader and its synchronous standby streaming."""
    async with healthy(cluster, synchronous=True):
        yield cluster


async def server_port(db: Database) -> int:
    """The port of the server the Database's units write to."""
    async with db.transaction() as session:
        return int(await session.scalar(text("SELECT inet_server_port()")) or 0)


async def test_a_multi_host_url_reaches_the_primary_whichever_host_comes_first(
    synchronous: PatroniCluster, driver: str
) -> None:
    """The standby listed first is skipped: target_session_attrs=read-write."""
    primary, standby = synchronous.primary_port(), synchronous.standby_port()
    async with Database(synchronous.url(driver, first=standby)) as db:
        assert await server_port(db) == primary


async def test_the_connect_error_names_every_host_when_none_is_the_primary(
    synchronous: PatroniCluster, driver: str
) -> None:
    """A host that is down and a standby, as in the seconds of a crash before promotion:
    DatabaseUnavailableError at connect(), naming both hosts, never the password."""
    down, standby = free_port(), synchronous.standby_port()
    url = synchronous.url(driver).replace(
        f"host=127.0.0.1%3A{synchronous.ports[0]}&host=127.0.0.1%3A{synchronous.ports[1]}",
        f"host=127.0.0.1%3A{down}&host=127.0.0.1%3A{standby}",
    )
    assert str(down) in url
    with pytest.raises(DatabaseUnavailableError) as refused:
        async with Database(url, connect_timeout=2):
            pass
    message = str(refused.value)
    assert f"127.0.0.1:{down}, 127.0.0.1:{standby}" in message
    assert str(synchronous.url_template.password) not in message


async def test_a_write_on_a_standby_is_a_lost_connection_answered_503(
    synchronous: PatroniCluster, driver: str
) -> None:
    """A unit that writes, on a URL that names the standby alone (as a pool does that kept
    connections to a demoted primary): 503 with Retry-After, and the pool's connections are
    dropped."""
    url = synchronous.node_url(synchronous.standby_port(), driver)
    db = Database(url)

    async def write(session: AsyncSession) -> dict[str, str]:
        await session.execute(text("CREATE TABLE refused (id int)"))
        return {}

    app = helpers.app_with(db.session, {"POST /write": write})
    async with db, helpers.client_for(app) as client:
        response = await client.post("/write")
        invalidated = db.stats().invalidated
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["detail"]["cause"] == "connection_lost"
    assert "refused a write as read-only" in response.json()["detail"]["message"]
    assert invalidated >= 1


async def test_a_write_in_a_read_only_unit_on_a_standby_stays_the_units_error(
    synchronous: PatroniCluster, driver: str
) -> None:
    """read_only=True and a write: the application's mistake, raised as before, not a 503."""
    url = synchronous.node_url(synchronous.standby_port(), driver)
    async with Database(url) as db:
        with pytest.raises(DBAPIError, match="read-only transaction"):
            async with db.transaction(read_only=True) as session:
                await session.execute(text("CREATE TABLE refused (id int)"))
        assert db.stats().invalidated == 0


@pytest.mark.server
async def test_after_a_switchover_the_app_writes_on_the_new_primary_within_one_request(
    synchronous: PatroniCluster, driver: str
) -> None:
    """The bank over HTTP: one transfer before the switchover, then one after another once
    the new primary serves; at most the first is refused (503), none is a 500."""
    url = synchronous.url(driver)
    async with Database(url) as db:
        await open_accounts(db, accounts=2, balance=1000)
    with running_server("examples.bank.app:app", {"DATABASE_URL": url}) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            assert (await transfer(client, "before")).status_code == 201
            old = synchronous.primary_port()
            new = await synchronous.switchover()
            statuses = [(await transfer(client, f"after-{n}")).status_code for n in range(3)]
    assert new != old
    assert statuses[1:] == [201, 201], statuses
    assert statuses[0] in (201, 503), statuses


async def transfer(client: httpx.AsyncClient, name: str) -> httpx.Response:
    """One transfer of 1 from account 0 to account 1."""
    body = {"id": name, "source": 0, "target": 1, "amount": 1}
    return await client.post("/transfers", json=body)


async def test_durability_reports_the_synchronous_standby(synchronous: PatroniCluster) -> None:
    """synchronous_mode on: stats() says commits wait for the standby in sync."""
    async with Database(synchronous.url()) as db:
        durability = db.stats().durability
    assert durability is not None
    assert (durability.state, durability.in_sync, durability.standbys) == ("synchronous", 1, 1)
    assert durability.commits_wait


async def test_without_a_synchronous_standby_the_database_warns_once(
    cluster: PatroniCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """synchronous_mode off, a standby streaming: "asynchronous", and one warning over two
    connects of the same Database."""
    caplog.set_level(logging.WARNING, logger="dbscope")
    async with healthy(cluster, synchronous=False):
        db = Database(cluster.url())
        async with db:
            stats = db.stats()
        async with db:
            pass
    durability = stats.durability
    assert "durability=Durability(state='asynchronous'" in repr(stats)
    assert durability is not None
    assert (durability.state, durability.standbys, durability.commits_wait) == (
        "asynchronous",
        1,
        False,
    )
    warnings = [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert str(cluster.url_template.password) not in warnings[0]


async def test_durability_is_read_again_after_the_pool_lost_connections(
    cluster: PatroniCluster,
) -> None:
    """synchronous_mode turned off under a connected Database: once its pool has lost a
    connection (as in a failover), the background reading says "asynchronous"."""
    name = "dbscope-durability-test"
    async with (
        healthy(cluster, synchronous=True),
        Database(cluster.url(), application_name=name) as db,
    ):
        before = db.stats().durability
        await cluster.synchronous(False)
        async with helpers.admin(cluster.url()) as connection:
            terminate = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            await connection.execute(text(f"{terminate} WHERE application_name = '{name}'"))
        # The next unit finds its connection gone (replaced at checkout, or lost in use: a
        # 503): either way the pool drops it.
        with contextlib.suppress(DatabaseUnavailableError):
            async with db.transaction() as session:
                await session.execute(text("SELECT 1"))
        after = None
        for _ in range(150):  # the reading waits 1 s, then takes one connection
            after = db.stats().durability
            if after is not None and after.state != "synchronous":
                break
            await anyio.sleep(0.1)
        await cluster.synchronous(True)
        # No connection is lost now: the reading goes on while it has fewer standbys in
        # sync than before, as after a failover until the old primary rejoins as a standby.
        again = None
        for _ in range(300):
            again = db.stats().durability
            if again is not None and again.state == "synchronous":
                break
            await anyio.sleep(0.1)
    assert before is not None
    assert before.state == "synchronous"
    assert after is not None
    assert after.state == "asynchronous"
    assert again is not None
    assert again.state == "synchronous"


async def test_remote_apply_commits_are_visible_on_the_standby_at_once(
    synchronous: PatroniCluster,
) -> None:
    """synchronous_commit="remote_apply": each write is on the standby when its unit ends."""
    standby = synchronous.node_url(synchronous.standby_port())
    async with Database(synchronous.url()) as db:
        async with db.transaction() as session:
            await session.execute(text("DROP TABLE IF EXISTS applied"))
            await session.execute(text("CREATE TABLE applied (id int PRIMARY KEY)"))
        stale = 0
        async with helpers.admin(standby) as reader:
            for number in range(50):
                async with db.transaction(synchronous_commit="remote_apply") as session:
                    await session.execute(text(f"INSERT INTO applied VALUES ({number})"))
                seen = await reader.scalar(
                    text(f"SELECT count(*) FROM applied WHERE id = {number}")
                )
                stale += seen != 1
    assert stale == 0


# -- docs/failover.md: each python block runs ---------------------------------------------

GUIDE = "docs/failover.md"


def guide_urls(cluster: PatroniCluster, first: int) -> dict[str, str]:
    """The guide's hosts and credentials replaced by the cluster's, ``first`` listed first."""
    other = cluster.ports[1] if first == cluster.ports[0] else cluster.ports[0]
    return {
        "db-1:5432": f"127.0.0.1:{first}",
        "db-2:5432": f"127.0.0.1:{other}",
        "app:secret@/app": f"postgres:{cluster.url_template.password}@/test",
    }


async def test_the_guides_multi_host_urls_reach_the_primary(synchronous: PatroniCluster) -> None:
    """Both of the guide's URLs, the standby listed first, write on the primary."""
    code = block_containing(GUIDE, "target_session_attrs=read-write")
    replace = guide_urls(synchronous, first=synchronous.standby_port())
    made = run_block(code, "", replace=replace)
    for name in ("db", "psycopg_db"):
        async with made[name] as db:
            assert await server_port(db) == synchronous.primary_port()


async def test_the_guides_standby_check_passes_only_with_a_synchronous_standby(
    cluster: PatroniCluster,
) -> None:
    """require_synchronous_standby(): quiet with synchronous_mode, RuntimeError without."""
    code = block_containing(GUIDE, "def require_synchronous_standby")
    check = run_block(code, "", namespace={"Database": Database})["require_synchronous_standby"]
    async with healthy(cluster, synchronous=True), Database(cluster.url()) as db:
        check(db)
    async with healthy(cluster, synchronous=False), Database(cluster.url()) as db:
        with pytest.raises(RuntimeError, match="commits wait for no standby"):
            check(db)


async def test_the_guides_remote_apply_receipt_is_on_the_standby_when_answered(
    synchronous: PatroniCluster,
) -> None:
    """The guide's /receipts answers once its row is applied on the standby; count_visit()
    commits locally."""
    url, standby = synchronous.url(), synchronous.node_url(synchronous.standby_port())
    async with helpers.admin(url) as connection:
        for table, columns in (("receipts", "note text"), ("visits", "count int")):
            await connection.execute(text(f"DROP TABLE IF EXISTS {table}"))
            await connection.execute(text(f"CREATE TABLE {table} ({columns})"))
        await connection.execute(text("INSERT INTO visits VALUES (0)"))
    db = Database(url)
    made = run_block(block_containing(GUIDE, "def store_receipt"), "", namespace={"db": db})
    async with db, helpers.client_for(made["app"]) as client:
        seen = []
        for _ in range(10):
            assert (await client.post("/receipts")).status_code == 200
            seen.append(await helpers.count_rows(standby, "receipts"))
        await made["count_visit"]()
    assert seen == list(range(1, 11))
    async with helpers.admin(url) as connection:
        assert await connection.scalar(text("SELECT count FROM visits")) == 1


async def _readings_over_a_switchover(db: Database, cluster: PatroniCluster) -> list[str]:
    """The durability states ``db`` shows, every 0.1 s, from a switchover until the old
    primary rejoins in sync."""
    seen: list[str] = []
    await cluster.switchover()
    for _ in range(300):  # about 30 s
        durability = db.stats().durability
        seen.append("" if durability is None else durability.state)
        if seen[-1] == "synchronous" and len(set(seen)) > 1:
            break
        await anyio.sleep(0.1)
    return seen


async def test_a_switchover_in_synchronous_mode_is_warned_of_by_no_reading_midway(
    synchronous: PatroniCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Patroni runs the promoted standby without a synchronous one for seconds: the readings
    taken while it settles said "asynchronous", and the one warning told the user to turn on
    the synchronous mode that was on (4 switchovers in 4). Only the settled reading is judged."""
    caplog.set_level(logging.WARNING, logger="dbscope")

    async def busy(db: Database) -> None:
        # Units all along, as an app's: the first to find its connection gone makes the
        # pool drop it, and the reading starts while the new primary settles.
        while True:
            with contextlib.suppress(DatabaseUnavailableError):
                async with db.transaction() as session:
                    await session.execute(text("SELECT 1"))
            await anyio.sleep(0.1)

    seen: list[str] = []
    async with Database(synchronous.url()) as db, anyio.create_task_group() as units:
        units.start_soon(busy, db)
        # The window lasts about a reading's interval: one that fell between two readings
        # (once, on a loaded machine) proves nothing of the warning, so switch over again.
        for _ in range(3):
            seen += await _readings_over_a_switchover(db, synchronous)
            if "asynchronous" in seen:
                break
        units.cancel_scope.cancel()
    assert seen[-1] == "synchronous", sorted(set(seen))
    assert "asynchronous" in seen  # the window the warning was given in
    assert not [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]
