"""Schemathesis fuzzes the notes service from its OpenAPI schema: no request may get a 5xx.

Every operation gets up to 50 generated requests, valid and invalid, sent over HTTP to the
app under a real uvicorn process: an in-process client would raise the app's exception in
the test instead of showing the 500 a client receives. Each answer must not be a 5xx and
must match the response schema (timestamps with their time zone included).

The same service then takes writes and reads from 20 clients at once: every one succeeds
(on SQLite, where one unit at a time writes, each waits its turn).

The service runs on a SQLite file of its own, then on PostgreSQL in a schema of its own,
created and dropped here: the rows it commits never meet the other tests, which share the
PostgreSQL tables through transactions that are rolled back.
"""

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import settings
from schemathesis import checks
from sqlalchemy import text

from dbscope import Database

from .app import app

ROOT = Path(__file__).parents[2]  # the repository root, where `examples.notes` is importable
ALEMBIC_INI = Path(__file__).with_name("alembic.ini")
# Ours to set: an outer DATABASE_URL or POSTGRES_* would otherwise reach the server.
INHERITED = {
    name: value
    for name, value in os.environ.items()
    if name != "DATABASE_URL" and not name.startswith("POSTGRES_")
}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def service_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The base URL of the service under uvicorn, on a SQLite file, then on PostgreSQL."""
    directory = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    log = directory / "uvicorn.log"
    if request.param == "sqlite":
        with serving({"DATABASE_URL": f"sqlite+aiosqlite:///{directory / 'notes.db'}"}, log) as url:
            seed(url)
            yield url
        return
    postgres_url: str = request.getfixturevalue("postgres_url")
    schema = f"notes_fuzz_{os.getpid()}"
    environment = {"DATABASE_URL": postgres_url, "POSTGRES_SCHEMA": schema}
    with own_schema(postgres_url, schema), serving(environment, log) as url:
        seed(url)
        yield url


def seed(url: str) -> None:
    """Store an author and a note, so that reading endpoints have rows to answer with."""
    author = httpx.post(f"{url}/authors", json={"name": "Ada"}).json()
    note = {"author_id": author["id"], "title": "engines", "body": "analytical"}
    httpx.post(f"{url}/notes", json=note).raise_for_status()


# The schema comes from the app object: no server is needed to collect the tests, one per
# operation; each sends its requests to the running service.
api = schemathesis.openapi.from_dict(app.openapi())


# The deadline is far above a request's usual milliseconds: it flags a request that hangs,
# not a busy machine. Examples bound the run: about 10 s per database on a quiet machine.
@settings(max_examples=50, deadline=timedelta(seconds=5), database=None)
@api.parametrize()
def test_no_generated_request_gets_a_server_error(
    case: schemathesis.Case[Any], service_url: str
) -> None:
    """Generated requests, valid and invalid, get 2xx or 4xx answers that match the schema."""
    case.call_and_validate(
        base_url=service_url,
        checks=[checks.not_a_server_error, checks.response_schema_conformance],
        timeout=10,
    )


@pytest.mark.anyio
async def test_concurrent_writes_and_reads_all_succeed(service_url: str) -> None:
    """100 ``POST /notes`` (each looks its author up, then inserts) and 100 reads, 20 at
    once, over HTTP: all answered 201 or 200, and every note stored."""
    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(base_url=service_url, limits=limits, timeout=30) as client:
        author = (await client.post("/authors", json={"name": "Grace"})).json()["id"]

        async def post(number: int) -> int:
            note = {"author_id": author, "title": f"concurrent {number}"}
            return (await client.post("/notes", json=note)).status_code

        async def read(number: int) -> int:
            path = f"/authors/{author}" if number % 2 else "/notes?limit=5"
            return (await client.get(path)).status_code

        statuses = await asyncio.gather(*map(post, range(100)), *map(read, range(100)))
        assert statuses == [201] * 100 + [200] * 100
        stored = (await client.get(f"/authors/{author}")).json()["notes"]
        assert len(stored) == 100


@contextlib.contextmanager
def serving(environment: dict[str, str], log: Path) -> Iterator[str]:
    """Migrate, then serve ``examples.notes.app:app`` under uvicorn; yield its URL, stop it
    at the end.

    The server writes to ``log``, shown when a test fails: a pipe that nobody reads would fill
    up with tracebacks and stall the server.
    """
    # The tables, made as `make demo` makes them.
    migrate = [
        sys.executable, "-m", "dbscope._cli", "migrate", "-c", str(ALEMBIC_INI), "upgrade", "head",
    ]  # fmt: skip
    with log.open("w") as output:
        migrated = subprocess.run(  # noqa: S603 - this interpreter running dbscope, no input
            migrate, cwd=ROOT, env={**INHERITED, **environment}, stdout=output, stderr=output
        )
    if migrated.returncode != 0:
        message = f"dbscope migrate exited with {migrated.returncode}:\n{log.read_text()}"
        raise RuntimeError(message)
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "examples.notes.app:app",
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
    ]  # fmt: skip
    with log.open("a") as output:
        process = subprocess.Popen(  # noqa: S603 - this interpreter running uvicorn, no input
            command, cwd=ROOT, env={**INHERITED, **environment}, stdout=output, stderr=output
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(process, url, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        print(log.read_text())  # pytest shows what a fixture prints only when a test fails


def wait_until_healthy(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Return when GET /readyz answers 200; raise if the server exits or takes 20 s."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            message = f"uvicorn exited with {process.returncode}:\n{log.read_text()}"
            raise RuntimeError(message)
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    message = f"The service did not answer on {url} within 20 s:\n{log.read_text()}"
    raise RuntimeError(message)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def own_schema(url: str, name: str) -> Iterator[None]:
    """A PostgreSQL schema that exists for the block, dropped with its tables at the end."""
    asyncio.run(execute(url, f"CREATE SCHEMA {name}"))
    try:
        yield
    finally:
        asyncio.run(execute(url, f"DROP SCHEMA {name} CASCADE"))


async def execute(url: str, statement: str) -> None:
    """Run one statement in a transaction of its own, on a Database of its own."""
    async with Database(url) as database, database.transaction() as session:
        await session.execute(text(statement))
