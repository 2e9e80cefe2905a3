"""Read-your-writes across requests (dbscope.fastapi.ReadYourWrites), on a real primary and
its streaming replica (tests/replica_cluster.py), in a database of these tests' own.

The app (tests/apps/read_your_writes_app.py) runs under uvicorn in a subprocess and is spoken
to over HTTP. Stale reads are made for real: the replica applies each commit late
(``recovery_min_apply_delay``) or its replay is paused. Every test that reads its own writes
also shows that the replica really served reads: in the app's ``db.stats()`` and in the
replica's own statistics (pg_stat_statements), so that a replica which does not stream
cannot make them pass. The guide's blocks (docs/replicas.md) on the same pair:
tests/test_read_your_writes_guide.py.
"""

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, table, text
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import ConfigurationError, Database
from dbscope.fastapi import ReadYourWrites
from tests.helpers import app_with, client_for
from tests.read_your_writes_pair import (
    COOKIE,
    DELAY_MS,
    HEADER,
    Pair,
    api_write,
    app_stats,
    browser,
    served,
)
from tests.replica_cluster import apply_delayed, replay_paused, statements_served, wait_for_replay

pytest_plugins = ["tests.read_your_writes_fixtures"]

NOTES = table("ryw_notes")


# -- POST, redirect, GET ---------------------------------------------------------------------


async def test_a_browser_reads_its_own_write_after_post_redirect_get(notes: Pair) -> None:
    """POST, 303, GET with the browser's cookie: the GET sees the write, served by the
    replica once it applied it, though the replica applies each commit 2 s late."""
    with served(notes) as base_url:
        served_before = await statements_served(notes.replica)
        async with apply_delayed(notes.replica, DELAY_MS), browser(base_url) as client:
            response = await client.post("/notes", params={"body": "mine"})
            stats = await app_stats(client)
    redirect = response.history[0]
    assert redirect.status_code == 303
    assert redirect.cookies[COOKIE] == redirect.headers[HEADER]
    assert response.json() == {"body": "mine", "on_replica": True}
    assert stats == {"state": "ready", "served": 1, "fallbacks": {}}
    assert await statements_served(notes.replica) > served_before


async def test_without_the_middleware_the_same_read_is_stale(notes_asyncpg: Pair) -> None:
    """The same POST, 303, GET without ReadYourWrites reads the replica before it applied the
    write: the note is not found (what the middleware prevents)."""
    with served(notes_asyncpg, middleware=False) as base_url:
        async with apply_delayed(notes_asyncpg.replica, DELAY_MS), browser(base_url) as client:
            response = await client.post("/notes", params={"body": "mine"})
            stats = await app_stats(client)
    assert "set-cookie" not in response.history[0].headers
    assert response.json() == {"body": None, "on_replica": True}
    assert stats["served"] == 1


async def test_without_the_cookie_the_same_read_is_stale(notes_asyncpg: Pair) -> None:
    """A client that drops the cookie reads the replica before it applied the write."""
    with served(notes_asyncpg) as base_url:
        async with apply_delayed(notes_asyncpg.replica, DELAY_MS):
            async with httpx.AsyncClient(base_url=base_url) as writer:
                redirect = await writer.post("/notes", params={"body": "mine"})
            async with httpx.AsyncClient(base_url=base_url) as reader:
                response = await reader.get(redirect.headers["location"])
                stats = await app_stats(reader)
    assert COOKIE in redirect.cookies
    assert response.json() == {"body": None, "on_replica": True}
    assert stats["served"] == 1


async def test_a_read_the_replica_has_not_replayed_goes_to_the_primary(
    notes_asyncpg: Pair,
) -> None:
    """With the replica's replay paused, the GET after the write reads the primary (a
    fallback counted as "behind") and sees the write; after replay resumes, the replica
    serves the same GET."""
    pair = notes_asyncpg
    with served(pair, wait=0.2) as base_url:
        async with browser(base_url) as client:
            async with replay_paused(pair.replica):
                paused = await client.post("/notes", params={"body": "mine"})
            await wait_for_replay(pair.primary, pair.replica)
            resumed = await client.get(paused.url.path)
            stats = await app_stats(client)
    assert paused.json() == {"body": "mine", "on_replica": False}
    assert resumed.json() == {"body": "mine", "on_replica": True}
    assert stats == {"state": "ready", "served": 1, "fallbacks": {"behind": 1}}


async def test_the_newer_of_two_cookies_of_the_name_holds_whichever_comes_last(
    notes_asyncpg: Pair,
) -> None:
    """A browser sends a cookie set under Path=/admin before one of the same name set under
    Path=/: the newer token holds though the older comes last (the last one alone was read)."""
    pair = notes_asyncpg
    with served(pair, wait=0.2) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as writer, replay_paused(pair.replica):
            written = await writer.post("/notes", params={"body": "mine"})
            cluster = written.cookies[COOKIE].split(":")[0]
            cookies = f"{COOKIE}={written.cookies[COOKIE]}; {COOKIE}={cluster}:0"
            async with httpx.AsyncClient(base_url=base_url) as reader:
                read = await reader.get(written.headers["location"], headers={"cookie": cookies})
    assert read.json() == {"body": "mine", "on_replica": False}


# -- API clients -----------------------------------------------------------------------------


async def test_an_api_client_that_echoes_the_header_reads_its_own_write(notes: Pair) -> None:
    """An API client without cookies that sends the response header back reads its write,
    served by the replica once it applied it."""
    with served(notes) as base_url:
        served_before = await statements_served(notes.replica)
        async with apply_delayed(notes.replica, DELAY_MS):
            note, token = await api_write(base_url, "mine")
            async with httpx.AsyncClient(base_url=base_url) as client:
                response = await client.get(f"/notes/{note}", headers={HEADER: token})
                stats = await app_stats(client)
    assert response.json() == {"body": "mine", "on_replica": True}
    assert stats == {"state": "ready", "served": 1, "fallbacks": {}}
    assert await statements_served(notes.replica) > served_before


async def test_a_request_that_only_reads_gets_no_cookie(notes_asyncpg: Pair) -> None:
    """Reads, with the tokens of an earlier write or without any, set no cookie and send no
    token header; the write before them did."""
    with served(notes_asyncpg) as base_url:
        async with browser(base_url) as client:
            written = await client.post("/notes", params={"body": "mine"})
            with_cookie = await client.get(written.url.path)
        async with httpx.AsyncClient(base_url=base_url) as client:
            without = await client.get(written.url.path)
            stats = await app_stats(client)
    assert COOKIE in written.history[0].cookies
    for response in (with_cookie, without):
        assert response.json()["body"] == "mine"
        assert "set-cookie" not in response.headers
        assert HEADER not in response.headers
    assert stats["served"] >= 1


# -- the options ------------------------------------------------------------------------------


async def insert_note(session: AsyncSession) -> dict[str, str]:
    """Store one note."""
    await session.execute(text("INSERT INTO ryw_notes (body) VALUES ('mine')"))
    return {"stored": "mine"}


async def test_the_cookie_and_header_take_the_options_given(notes_asyncpg: Pair) -> None:
    """Cookie name, header name, max-age, Secure and path are those given; the cookie is
    HttpOnly and SameSite=Lax, and holds the header's tokens."""
    db = Database(notes_asyncpg.primary, replicas=[notes_asyncpg.replica])
    app = app_with(db.session, {"POST /notes": insert_note})
    app.add_middleware(
        ReadYourWrites, cookie_name="w", header_name="X-Writes", max_age=5, secure=True, path="/app"
    )
    async with db, client_for(app) as client:
        response = await client.post("/notes")
    token = response.headers["x-writes"]
    assert response.headers["set-cookie"] == (
        f"w={token}; Max-Age=5; Path=/app; HttpOnly; SameSite=Lax; Secure"
    )
    assert token.split(":")[0].isdigit()


async def count_notes(session: AsyncSession) -> dict[str, int]:
    """Count the notes with a plain read (a Core SELECT, no SQL text)."""
    return {"notes": int(await session.scalar(select(func.count()).select_from(NOTES)) or 0)}


@pytest.mark.parametrize(("defer_begin", "token_after_a_read"), [(True, False), (False, True)])
async def test_a_read_write_unit_that_only_read_gives_no_token(
    notes_asyncpg: Pair, defer_begin: bool, token_after_a_read: bool
) -> None:
    """A request on ``db.session`` that only read wrote nothing, so it hands out no token
    that later reads would wait for; its transaction never began on the primary. One that
    wrote does. (With ``defer_begin=False`` every committed unit's position is taken.)"""
    db = Database(notes_asyncpg.primary, replicas=[notes_asyncpg.replica], defer_begin=defer_begin)
    app = app_with(db.session, {"POST /notes": insert_note, "GET /notes": count_notes})
    app.add_middleware(ReadYourWrites)
    async with db, client_for(app) as client:
        read = await client.get("/notes")
        written = await client.post("/notes")
    assert read.status_code == written.status_code == 200
    assert (HEADER in read.headers) is token_after_a_read
    assert HEADER in written.headers


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("cookie_name", ""),
        ("cookie_name", "my cookie"),
        ("cookie_name", "a;b"),
        ("header_name", "X Writes"),
        ("header_name", None),
        ("max_age", 0),
        ("max_age", -60),
        ("max_age", 1.5),
        ("max_age", True),
        ("max_age", "60"),
        ("max_age", 3601),
        ("max_age", 10**12),
        ("secure", "yes"),
        ("path", "app"),
        ("path", "/a;b"),
        ("path", "/a b"),
    ],
)
def test_an_unusable_option_is_refused_at_construction(option: str, value: object) -> None:
    """A bad name, lifetime, Secure flag or path: ConfigurationError naming the option and
    the value as given, before any request."""
    given: dict[str, Any] = {option: value}  # wrong on purpose, types included
    with pytest.raises(ConfigurationError) as raised:
        ReadYourWrites(FastAPI(), **given)
    assert f"{option}={value!r}" in str(raised.value)


async def count_notes_in_sql_text(session: AsyncSession) -> dict[str, int]:
    """Count the notes with SQL text, which begins the transaction on PostgreSQL."""
    return {"notes": int(await session.scalar(text("SELECT count(*) FROM ryw_notes")) or 0)}


async def test_a_read_in_sql_text_on_db_session_gives_a_token_and_on_read_session_none(
    notes_asyncpg: Pair,
) -> None:
    """As docs/replicas.md says: a GET that only reads, in text(), on ``db.session`` begins
    the transaction and so hands out a token; the same read on ``db.read_session`` does not."""
    db = Database(notes_asyncpg.primary, replicas=[notes_asyncpg.replica])
    routes = {"GET /notes": count_notes_in_sql_text}
    on_session, on_read_session = app_with(db.session, routes), app_with(db.read_session, routes)
    for app in (on_session, on_read_session):
        app.add_middleware(ReadYourWrites)
    async with db, client_for(on_session) as writer, client_for(on_read_session) as reader:
        read_write = await writer.get("/notes")
        read_only = await reader.get("/notes")
    assert read_write.status_code == read_only.status_code == 200
    assert HEADER in read_write.headers
    assert COOKIE in read_write.cookies
    assert HEADER not in read_only.headers
    assert "set-cookie" not in read_only.headers
