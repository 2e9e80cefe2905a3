"""A Database bound to a test's connection follows that connection's database.

An app often defaults to SQLite in development (``Database.from_env(default_url=...)``) and is
tested on PostgreSQL or MariaDB, where the test binds it to its own connection: the units then
run on that server, and must read its errors and speak its SQL, not SQLite's.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations.

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import String, insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dbscope import Database, testing

from .helpers import admin

TABLE = "bound_tags"


class Base(DeclarativeBase):
    pass


class Tag(Base):
    __tablename__ = TABLE
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(20), unique=True)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An any-loop engine on the server, with an empty tags table with a unique name."""
    async with admin(database_url) as connection:
        await connection.execute(text(f"DROP TABLE IF EXISTS {TABLE}"))
        await connection.run_sync(Base.metadata.create_all)
    with testing.any_loop_engine(database_url) as engine:
        yield engine
    async with admin(database_url) as connection:
        await connection.execute(text(f"DROP TABLE {TABLE}"))


def tags_app(db: Database) -> FastAPI:
    """POST /tags/{id}/{name}: adds a tag, written by the request's commit (its flush)."""
    app = FastAPI(lifespan=db.lifespan)
    Session = Annotated[AsyncSession, Depends(db.session)]

    @app.post("/tags/{tag_id}/{name}", status_code=201)
    async def add(tag_id: int, name: str, session: Session) -> None:
        session.add(Tag(id=tag_id, name=name))

    return app


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg", "asyncmy"])
async def test_a_constraint_failing_at_commit_is_a_409_on_the_bound_server(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """An app built for SQLite, bound to the server: a duplicate answers 409, as in production.

    With SQLite's rules the server's IntegrityError was no constraint violation, and the test
    saw the raw error instead of the app's answer.
    """
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'dev.db'}")
    async with testing.rolled_back(db, engine), testing.client(tags_app(db)) as http:
        first = await http.post("/tags/1/urgent")
        again = await http.post("/tags/2/urgent")
    assert first.status_code == 201
    assert (again.status_code, again.json()["detail"]["cause"]) == (409, "constraint_violation")
    assert not (tmp_path / "dev.db").exists()  # the app's own URL was never reached


# MariaDB's read-only transactions are left out inside a test's transaction (_dialects/mysql.py).
@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
async def test_a_read_only_unit_is_read_only_on_the_bound_server_and_the_app_s_rules_return(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """While bound, a read-only unit's write is refused by PostgreSQL (its rules make the
    transaction read-only); once unbound, the app's own database and rules are back."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'dev.db'}")
    async with testing.rolled_back(db, engine):
        with pytest.raises(Exception, match=r"(?i)read.only") as refused:
            async with db.transaction(read_only=True) as session:
                await session.execute(insert(Tag).values(id=1, name="x"))
    assert type(refused.value).__module__.split(".")[0] != "dbscope"  # the server's own error
    async with db, db.transaction() as session:
        await session.execute(text("CREATE TABLE kept (id INTEGER)"))  # the app's own SQLite
    assert (tmp_path / "dev.db").exists()
