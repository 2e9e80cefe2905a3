"""A replica URL of several hosts (docs/replicas.md recommends one for a set of standbys):
each connection may reach another server, each at its own position in the primary's log, so
what the periodic check read on one says nothing of the server a read reaches. A read that
must see a write is checked on its own connection.

On the real pair and a second standby of its primary (tests/replicas/cluster add-standby),
the pair's replica's replay paused.
"""

from sqlalchemy.engine import make_url

from dbscope import Database
from tests.replica_cluster import (
    ReplicaPair,
    drop_standby,
    replay_paused,
    second_standby,
    wait_for_replay,
)
from tests.replica_reads import DATABASE, add_item, fallbacks, has_item, in_recovery

pytest_plugins = ["tests.replica_fixtures"]


def several_hosts(first: str, then: str) -> str:
    """One URL reaching the server of ``first``, or of ``then`` when that one is down."""
    hosts = [f"{url.host}:{url.port}" for url in map(make_url, (first, then))]
    url = make_url(first).set(host=None, port=None, database=DATABASE, query={"host": hosts})
    return url.render_as_string(hide_password=False)


async def test_a_read_after_a_write_is_checked_on_the_server_its_connection_reached(
    urls: tuple[str, str], replica_pair: ReplicaPair
) -> None:
    """The check read the second standby, which has the write; then it stops, the read's
    connection reaches the pair's replica, which has not replayed the write: the read runs on
    the primary and sees it (before, it ran on the replica and did not)."""
    primary, replica = urls
    driver = make_url(primary).drivername
    async with second_standby(replica_pair) as standby, replay_paused(replica):
        standby = make_url(standby).set(drivername=driver).render_as_string(False)
        async with Database(primary, replicas=[several_hosts(standby, replica)]) as writer:
            await add_item(writer, 1)
            token = writer.write_token()
        await wait_for_replay(primary, standby)
        async with Database(
            primary,
            replicas=[several_hosts(standby, replica)],
            replica_check_interval=60,  # no check after the one at connect
            replica_wait=0.2,
            pool_pre_ping_after=0,  # the dead connection is replaced, not reported
        ) as db:
            # The check at connect read the standby: replica 'ready', with the write.
            assert db.stats().replicas[0].state == "ready"
            await drop_standby(replica_pair)
            async with db.transaction(read_only=True, after=token) as session:
                assert (await in_recovery(session), await has_item(session, 1)) == (False, True)
            assert fallbacks(db) == {"behind": 1}
            # The replica was reached, and is behind: a read that may be stale sees no item.
            async with db.transaction(read_only=True, stale_ok=True) as session:
                assert (await in_recovery(session), await has_item(session, 1)) == (True, False)
