"""The code in README.md and docs/ runs as written."""

import re
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.documented import (
    DOCS_URL,
    block_containing,
    python_blocks,
    run_async_block,
    run_block,
)


# The quick start uses INSERT ... RETURNING, which MariaDB 10.11 lacks.
@pytest.mark.parametrize("db_backend", ["sqlite", "asyncpg", "psycopg"])
async def test_readme_quick_start_commits_a_note(database_url: str) -> None:
    """The README's quick start answers POST /notes and the note is stored."""
    namespace = run_block(python_blocks("README.md")[0], database_url)
    db, app = namespace["db"], namespace["app"]
    async with db.lifespan(app):
        async with db.transaction() as session:
            await session.execute(text("DROP TABLE IF EXISTS notes"))
            await session.execute(
                text("CREATE TABLE notes (id INTEGER PRIMARY KEY, text VARCHAR(200))")
                if "sqlite" in database_url
                else text("CREATE TABLE notes (id SERIAL PRIMARY KEY, text VARCHAR(200))")
            )
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://docs") as client:
            response = await client.post("/notes", json={"text": "hello"})
        async with db.transaction() as session:
            stored = (await session.execute(text("SELECT text FROM notes"))).scalars().all()
            await session.execute(text("DROP TABLE notes"))
    assert response.status_code == 200
    assert response.json()["text"] == "hello"
    assert stored == ["hello"]


async def test_scripts_guide_example_deletes_the_rows(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The purge script of docs/scripts.md deletes the rows it names, on PostgreSQL."""
    monkeypatch.setenv("DATABASE_URL", postgres_url)
    namespace = run_block(python_blocks("docs/scripts.md")[0], postgres_url)
    db = namespace["db"]
    async with db, db.transaction() as session:
        await session.execute(text("DROP TABLE IF EXISTS notes"))
        await session.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY)"))
        await session.execute(text("INSERT INTO notes VALUES (1), (2), (3), (4)"))
    await namespace["purge"]([1, 2, 3])
    async with db, db.transaction() as session:
        left = (await session.execute(text("SELECT id FROM notes"))).scalars().all()
        await session.execute(text("DROP TABLE notes"))
    assert left == [4]


def shown_server(shown: str) -> str:
    """A ServerInfo repr with its version numbers left out: they are the server's own."""
    return re.sub(r"version=\([0-9, ]+\)", "version=(...)", shown)


@pytest.mark.parametrize("db_backend", ["asyncpg"])
async def test_the_pool_figures_in_the_scripts_guide_are_what_db_stats_gives(
    database_url: str,
) -> None:
    """Each PoolStats, ServerInfo and URL the scripts guide shows is what the code gives."""
    code = block_containing("docs/scripts.md", "db.stats()")
    namespace: dict[str, Any] = {}
    code = code.replace(DOCS_URL, repr(database_url))
    seen = await run_async_block(code, namespace)
    claims = [
        (shown_server(comment), shown_server(shown))
        if comment.startswith("ServerInfo(")
        else (comment, shown)
        for comment, shown in seen
        if comment.startswith(("PoolStats(", "ServerInfo(", "postgresql"))
    ]
    assert len(claims) == 5
    for comment, shown in claims:
        assert shown == comment
