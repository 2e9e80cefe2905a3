"""Write tokens are data, not authority: what a client's garbled, forged or foreign token
does to its reads, through the app of tests/apps/read_your_writes_app.py under uvicorn, on a
real primary and its streaming replica (the other read-your-writes tests:
tests/test_read_your_writes.py)."""

import httpx
from sqlalchemy import text

from dbscope import Database
from tests.read_your_writes_pair import (
    COOKIE,
    HEADER,
    UNKNOWN_POSITION,
    Pair,
    api_write,
    app_stats,
    served,
)
from tests.replica_cluster import replay_paused, statements_served, wait_for_replay

pytest_plugins = ["tests.read_your_writes_fixtures"]

# A gibibyte further than the primary's log: made up, as no commit has given it yet.
AHEAD = 1 << 30


async def test_a_token_of_an_unknown_position_costs_only_reads_from_the_primary(
    notes_asyncpg: Pair,
) -> None:
    """A token of the right cluster and the unknown position (a write whose position could
    not be read) reads the primary at once (counted "behind") and answers correctly; the same
    read without it uses the replica."""
    pair = notes_asyncpg
    with served(pair, wait=0.2) as base_url:
        note, token = await api_write(base_url, "mine")
        await wait_for_replay(pair.primary, pair.replica)
        forged = f"{token.split(':')[0]}:{UNKNOWN_POSITION}"
        async with httpx.AsyncClient(base_url=base_url) as client:
            response = await client.get(f"/notes/{note}", headers={HEADER: forged})
            plain = await client.get(f"/notes/{note}")
            stats = await app_stats(client)
    assert response.json() == {"body": "mine", "on_replica": False}
    assert plain.json() == {"body": "mine", "on_replica": True}
    assert stats == {"state": "ready", "served": 1, "fallbacks": {"behind": 1}}


async def test_a_write_replaces_the_unknown_position_its_client_sent(notes_asyncpg: Pair) -> None:
    """A client sends back the token of a write whose position could not be read (a position
    no replica reaches); the response to its next write carries that write's own position,
    so its reads go back to the replica (before: the unknown position stayed its token for
    good, and every later read of the client ran on the primary)."""
    pair = notes_asyncpg
    with served(pair, wait=0.2) as base_url:
        _, token = await api_write(base_url, "first")
        unknown = f"{token.split(':')[0]}:{UNKNOWN_POSITION}"
        async with httpx.AsyncClient(base_url=base_url) as client:
            posted = await client.post(
                "/api/notes", json={"body": "mine"}, headers={HEADER: unknown}
            )
            # The client keeps the token it has when a response carries none.
            note, token = posted.json()["id"], posted.headers.get(HEADER, unknown)
            await wait_for_replay(pair.primary, pair.replica)
            response = await client.get(f"/notes/{note}", headers={HEADER: token})
    assert not token.endswith(UNKNOWN_POSITION)
    assert response.json() == {"body": "mine", "on_replica": True}


async def test_a_token_of_another_cluster_is_ignored(notes_asyncpg: Pair) -> None:
    """A cookie token naming another cluster, however far its position, does not hold the
    read back: the replica serves it, and nothing falls back to the primary."""
    pair = notes_asyncpg
    with served(pair, wait=0.2) as base_url:
        note, token = await api_write(base_url, "mine")
        await wait_for_replay(pair.primary, pair.replica)
        cluster = int(token.split(":")[0])
        other = f"{cluster + 1}:{UNKNOWN_POSITION}"
        async with httpx.AsyncClient(base_url=base_url) as client:
            cookie = {"cookie": f"{COOKIE}={other}"}
            response = await client.get(f"/notes/{note}", headers=cookie)
            stats = await app_stats(client)
    assert response.json() == {"body": "mine", "on_replica": True}
    assert stats == {"state": "ready", "served": 1, "fallbacks": {}}


async def test_garbled_and_oversized_tokens_are_ignored(notes_asyncpg: Pair) -> None:
    """Text that is no token, a position that is no number, and a header longer than any
    honest one (even one holding a forged token) are ignored: the replica serves each read."""
    pair = notes_asyncpg
    with served(pair, wait=0.2) as base_url:
        note, token = await api_write(base_url, "mine")
        await wait_for_replay(pair.primary, pair.replica)
        cluster = token.split(":")[0]
        oversized = ",".join([f"{cluster}:{UNKNOWN_POSITION}"] + ["0:0"] * 200)
        sent = [
            {HEADER: "not a token"},
            {HEADER: f"{cluster}:not-hex"},
            {HEADER: oversized},
            {"cookie": f"{COOKIE}=%%%; other=1"},
        ]
        async with httpx.AsyncClient(base_url=base_url) as client:
            responses = [await client.get(f"/notes/{note}", headers=each) for each in sent]
            stats = await app_stats(client)
    assert [response.json() for response in responses] == [
        {"body": "mine", "on_replica": True}
    ] * len(sent)
    assert stats == {"state": "ready", "served": len(sent), "fallbacks": {}}


async def test_a_write_echoes_at_most_eight_clusters_however_many_cookies_brought(
    notes_asyncpg: Pair,
) -> None:
    """400 cookies of the name, each with a cluster of its own: the write's response carries
    the first 8 and its own (before, every one: 32 KB of headers back for 38 KB sent)."""
    with served(notes_asyncpg) as base_url:
        cookies = "; ".join(f"{COOKIE}={1000 + number}:1" for number in range(400))
        async with httpx.AsyncClient(base_url=base_url) as client:
            response = await client.post(
                "/api/notes", json={"body": "mine"}, headers={"cookie": cookies}
            )
    echoed = response.headers[HEADER].split(",")
    assert response.status_code == 201
    assert echoed[:8] == [f"{1000 + number}:1" for number in range(8)]
    assert len(echoed) == 9


async def test_a_token_further_than_the_primarys_log_is_ignored(notes_asyncpg: Pair) -> None:
    """A token of the right cluster a gibibyte past the primary's log names no write: the
    read takes the replica at once, with no more statements there than the same read without
    it (before, it asked the replica again every 2 ms for replica_wait, then read the primary:
    about 100 statements on the replica per read, and a fallback)."""
    pair = notes_asyncpg
    with served(pair, wait=0.2) as base_url:
        note, token = await api_write(base_url, "mine")
        await wait_for_replay(pair.primary, pair.replica)
        cluster, position = token.split(":")
        forged = f"{cluster}:{int(position, 16) + AHEAD:X}"
        async with httpx.AsyncClient(base_url=base_url) as client:
            before = await statements_served(pair.replica)
            plain = await client.get(f"/notes/{note}")
            between = await statements_served(pair.replica)
            response = await client.get(f"/notes/{note}", headers={HEADER: forged})
            after = await statements_served(pair.replica)
            stats = await app_stats(client)
    assert plain.json() == response.json() == {"body": "mine", "on_replica": True}
    assert after - between == between - before
    assert stats == {"state": "ready", "served": 2, "fallbacks": {}}


async def test_a_token_of_another_process_later_write_is_honoured(notes_asyncpg: Pair) -> None:
    """A token of a write made after the app last read the primary's position (by another
    process: here, the test's own Database) is no forgery: with the replica's replay paused
    the read waits for it, then reads the primary and sees the write."""
    pair = notes_asyncpg
    with served(pair, wait=0.2) as base_url:
        writer = Database(pair.primary, replicas=[pair.replica])
        async with replay_paused(pair.replica), writer:
            async with writer.transaction() as session:
                insert = text("INSERT INTO ryw_notes (body) VALUES ('theirs') RETURNING id")
                note = (await session.execute(insert)).scalar_one()
            token = writer.write_token()
            assert token is not None
            async with httpx.AsyncClient(base_url=base_url) as client:
                response = await client.get(f"/notes/{note}", headers={HEADER: token})
                stats = await app_stats(client)
    assert response.json() == {"body": "theirs", "on_replica": False}
    assert stats == {"state": "ready", "served": 0, "fallbacks": {"behind": 1}}


async def test_a_token_is_checked_on_the_primary_only_with_a_connection_free(
    notes_asyncpg: Pair,
) -> None:
    """A token of another process's later write is checked on the primary only if one of its
    connections is free at once: in a unit holding the pool's only one, a read with it runs
    on the replica that has the write, and no checkout waited out pool_timeout (before, the
    check waited in the primary's line, and failed there, a timeout counted)."""
    pair = notes_asyncpg
    writer = Database(pair.primary, replicas=[pair.replica], pool_name="writer")
    db = Database(
        pair.primary, replicas=[pair.replica], pool_size=1, max_overflow=0, pool_timeout=0.5
    )
    async with writer, db:
        async with writer.transaction() as session:
            insert = text("INSERT INTO ryw_notes (body) VALUES ('theirs') RETURNING id")
            note = (await session.execute(insert)).scalar_one()
        token = writer.write_token()
        await wait_for_replay(pair.primary, pair.replica)
        async with db.transaction() as session:
            await session.execute(text("SELECT 1"))  # the primary's one connection, held
            async with db.transaction(read_only=True, after=token) as read:
                query = text("SELECT body, pg_is_in_recovery() FROM ryw_notes WHERE id = :id")
                found = (await read.execute(query, {"id": note})).one()
        stats = db.stats()
    assert tuple(found) == ("theirs", True)
    assert (stats.timeouts, stats.replicas[0].served) == (0, 1)
