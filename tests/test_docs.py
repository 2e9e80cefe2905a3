"""The code in README.md and docs/ runs as written."""

import re
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from sqlalchemy import text

ROOT = Path(__file__).parent.parent


def python_blocks(document: str) -> list[str]:
    """The ```python blocks of a Markdown file under the repository root."""
    source = (ROOT / document).read_text()
    return re.findall(r"```python\n(.*?)```", source, flags=re.DOTALL)


def run_block(code: str, url: str) -> dict[str, Any]:
    """Execute a documented block as a module, with its database URL replaced by ``url``."""
    code = code.replace('"postgresql+asyncpg://app@localhost/app"', repr(url))
    module = ModuleType("documented_example")
    exec(compile(code, "<docs>", "exec"), module.__dict__)  # noqa: S102 - our own docs
    return module.__dict__


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
