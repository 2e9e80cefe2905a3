"""Read replicas vetted by Patroni (``replica_patroni_urls``), on the real two-node Patroni
cluster of tests/patroni_cluster.py: a standby whose member's ``/replica`` check answers 200
serves reads; one whose check fails (here: the check asked of the leader's member, which
Patroni answers 503 as no replica) or cannot be asked serves none, and its reads run on the
primary, counted.
"""

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from dbscope import Database
from tests.documented import block_containing, run_block
from tests.patroni_cluster import HOST, PORT, REST_PORT, PatroniCluster, alone
from tests.server import free_port

pytestmark = pytest.mark.patroni

GUIDE = "docs/replicas.md"


@pytest.fixture
async def cluster(patroni: PatroniCluster) -> AsyncIterator[PatroniCluster]:
    """The cluster, this test's alone, with a leader and a streaming standby."""
    with alone():
        await patroni.wait_ready()
        yield patroni


def rest_api(port: int) -> str:
    """The REST API of the Patroni member that runs PostgreSQL on ``port``."""
    return f"http://{HOST}:{REST_PORT + (port - PORT)}"


async def where_reads_run(db: Database) -> tuple[int, bool]:
    """The port and the recovery state of the server a read-only unit of ``db`` ran on."""
    async with db.transaction(read_only=True) as session:
        port = await session.scalar(text("SELECT inet_server_port()"))
        in_recovery = await session.scalar(text("SELECT pg_is_in_recovery()"))
    return int(port or 0), bool(in_recovery)


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_a_standby_that_patroni_calls_a_replica_serves_reads(
    cluster: PatroniCluster, driver: str
) -> None:
    """With its member's REST API named, the standby serves the reads while Patroni's
    /replica check answers 200."""
    standby = cluster.standby_port()
    db = Database(
        cluster.url(driver),
        replicas=[cluster.node_url(standby, driver)],
        replica_patroni_urls=[rest_api(standby)],
    )
    async with db:
        ran_on = await where_reads_run(db)
        stats = db.stats()
    assert ran_on == (standby, True)
    assert stats.replicas[0].state == "ready"
    assert stats.replicas[0].served == 1


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        ("leader", "Patroni's /replica check answered 503"),
        ("nobody", "its Patroni REST API could not be reached"),
    ],
)
async def test_a_standby_whose_patroni_check_fails_serves_no_reads(
    cluster: PatroniCluster, member: str, reason: str
) -> None:
    """A check that Patroni answers 503 (asked of the leader's member, which is no replica),
    or that nothing answers, keeps the standby out of service though PostgreSQL itself
    would serve: the reads run on the primary, counted."""
    standby, primary = cluster.standby_port(), cluster.primary_port()
    assert primary is not None
    patroni_url = rest_api(primary) if member == "leader" else f"http://{HOST}:{free_port()}"
    db = Database(
        cluster.url(),
        replicas=[cluster.node_url(standby)],
        replica_patroni_urls=[patroni_url],
    )
    async with db:
        ran_on = await where_reads_run(db)
        stats = db.stats()
    assert ran_on == (primary, False)
    assert (stats.replicas[0].state, stats.replicas[0].reason) == ("down", reason)
    assert stats.replicas[0].served == 0
    assert dict(stats.fallbacks) == {"no_replica_ready": 1}


async def test_the_guides_patroni_block_reads_on_the_standby(cluster: PatroniCluster) -> None:
    """docs/replicas.md's block with replica_patroni_urls, on the cluster's nodes."""
    standby = cluster.standby_port()
    code = block_containing(GUIDE, "replica_patroni_urls=")
    multi_host = "postgresql+asyncpg://app@/app?host=pg-1:5432&host=pg-2:5432"
    replace = {
        f'"{multi_host}&target_session_attrs=read-write"': repr(cluster.url()),
        '"postgresql+asyncpg://app@pg-2:5432/app"': repr(cluster.node_url(standby)),
        "http://pg-2:8008": rest_api(standby),
    }
    found = run_block(code, cluster.url(), namespace={"Database": Database}, replace=replace)
    db: Database = found["db"]
    async with db:
        ran_on = await where_reads_run(db)
    assert ran_on == (standby, True)


async def test_a_replica_url_of_the_clusters_hosts_follows_a_switchover(
    cluster: PatroniCluster,
) -> None:
    """The replica URL names the cluster's hosts, as the primary's does, asking for a standby
    (target_session_attrs=standby): accepted (it was refused as "the primary itself"), and
    after a switchover the replica serves from the new standby (its pool kept the node
    promoted: every read went to the primary, for good)."""
    url = cluster.url("psycopg")
    standby = make_url(url).update_query_dict({"target_session_attrs": "standby"})
    replica = standby.render_as_string(hide_password=False)
    async with Database(url, replicas=[replica], replica_check_interval=0.2) as db:
        before = await where_reads_run(db)
        promoted = await cluster.switchover()
        new_standby = cluster.standby_port()
        after = before
        for _ in range(150):  # the checks: promoted found, pool dropped, the standby found
            after = await where_reads_run(db)
            if after == (new_standby, True):
                break
            await asyncio.sleep(0.2)
    assert before[1] is True
    assert promoted == before[0]  # the standby it read became the primary
    assert after == (new_standby, True)
