"""Requests through PgBouncer: a real uvicorn serving one Database per driver and mode.

The app (tests/apps/pgbouncer_app.py) reads each Database from the environment behind its own
prefix, ``PGBOUNCER`` included. Many requests at once commit their writes and run their
on-commit hooks; a request answered 409 leaves nothing and runs none. The rows are counted on
the server directly, never through PgBouncer.
"""

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests.conftest import POSTGRES_DRIVERS, POSTGRES_URL
from tests.helpers import admin, without_settings
from tests.pgbouncer_service import MODES, Bouncers
from tests.server import running_server

pytestmark = pytest.mark.server

APP = "pgbouncer_app:app"
DIRECT = make_url(POSTGRES_URL).set(drivername="postgresql+asyncpg").render_as_string(False)
COMBINATIONS = [(driver, mode) for mode in MODES for driver in POSTGRES_DRIVERS]
WRITES = 30
REFUSED = 5


@pytest.fixture
async def notes() -> AsyncIterator[None]:
    """An empty ``pgb_notes`` table, dropped after the test."""
    async with admin(DIRECT) as connection:
        await connection.execute(text("DROP TABLE IF EXISTS pgb_notes"))
        await connection.execute(text("CREATE TABLE pgb_notes (source text, note text)"))
    yield
    async with admin(DIRECT) as connection:
        await connection.execute(text("DROP TABLE pgb_notes"))


def environment(pgbouncer: Bouncers) -> dict[str, str]:
    """Each Database's URL and mode, behind its prefix (ASYNCPG_TRANSACTION_...)."""
    variables = {}
    for driver, mode in COMBINATIONS:
        prefix = f"{driver}_{mode}_".upper().replace("-", "_")
        variables[f"{prefix}DATABASE_URL"] = pgbouncer.url(mode, driver, POSTGRES_URL)
        variables[f"{prefix}PGBOUNCER"] = mode
        variables[f"{prefix}POOL_SIZE"] = "5"
    return without_settings(**variables)


async def exercise(client: httpx.AsyncClient, name: str) -> tuple[list[int], list[str]]:
    """Send the writes and the refused requests at once; their statuses, then the notes
    whose on-commit hooks ran."""
    requests = [client.post(f"/{name}/notes/n{number}") for number in range(WRITES)]
    requests += [client.post(f"/{name}/notes/r{number}/refused") for number in range(REFUSED)]
    statuses = [response.status_code for response in await asyncio.gather(*requests)]
    committed = (await client.get(f"/{name}/committed")).json()
    return statuses, committed


@pytest.mark.usefixtures("notes")
async def test_requests_commit_through_pgbouncer_in_both_modes(pgbouncer: Bouncers) -> None:
    """Every write answered 200 is stored and its hook ran; every 409 left nothing."""
    names = [f"{driver}-{mode}" for driver, mode in COMBINATIONS]
    with running_server(APP, environment(pgbouncer)) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            results = await asyncio.gather(*(exercise(client, name) for name in names))
    written = {f"n{number}" for number in range(WRITES)}
    async with admin(DIRECT) as connection:
        for name, (statuses, committed) in zip(names, results, strict=True):
            assert sorted(statuses) == [200] * WRITES + [409] * REFUSED, name
            assert set(committed) == written, name
            query = text("SELECT note FROM pgb_notes WHERE source = :name")
            assert set(await connection.scalars(query, {"name": name})) == written, name
