"""Small helpers shared by the test modules.

- clients: :func:`client_for`, an in-process client, and :func:`send` for one request;
- apps: :func:`app_with` builds an app from its routes' bodies, :class:`ResponseStart` sees
  the response begin;
- the database seen from outside dbscope: :func:`admin`, :class:`Tables`, :func:`count_rows`,
  :func:`without_tables`;
- subprocesses: :func:`without_settings`, an environment without the database settings,
  :func:`postgres_parts`, the settings naming a PostgreSQL database by its parts, and
  :func:`imported_by`, the modules some code imports in a fresh interpreter;
- faults: :func:`kill` ends a server connection (:func:`kill_mid_request` in a request),
  :func:`connect_to_nothing` connects where no server listens, :class:`TcpProxy` (through
  :func:`proxied`) makes a server unreachable or silent, :func:`assert_unavailable` checks a
  503.
"""

import asyncio
import contextlib
import fcntl
import inspect
import json
import os
import subprocess
import sys
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Annotated, Any

import anyio
import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import MetaData, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, create_async_engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dbscope import Database, DatabaseSettings, DatabaseUnavailableError
from tests.run_databases import drop_tables
from tests.server import free_port

# The backends that run a server (and so have connections to kill), by driver.
SERVER_BACKENDS = ["asyncpg", "psycopg", "asyncmy"]
# The async drivers of the servers, as a URL names them.
SERVER_DRIVERNAMES = ["postgresql+asyncpg", "postgresql+psycopg", "mysql+asyncmy"]
# The query naming the server connection (backend) a session or connection runs on.
BACKEND_ID = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}

Body = Callable[..., Awaitable[Any]]
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


# -- clients and apps -------------------------------------------------------------------------


def client_for(app: ASGIApp, *, raise_app_exceptions: bool = False) -> httpx.AsyncClient:
    """An in-process client that answers a 500 like a server does instead of raising.

    It does not run the app's lifespan: the test connects the Database itself.
    ``raise_app_exceptions=True`` raises the app's unhandled exception in the test instead.
    """
    transport = httpx.ASGITransport(app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def send(
    app: ASGIApp, route: str, *, raise_app_exceptions: bool = False, **options: Any
) -> httpx.Response:
    """One request, ``"METHOD /path"``, to ``app`` through :func:`client_for`.

    ``options`` go to ``httpx.AsyncClient.request`` (``params``, ``json``, ...).
    """
    method, path = route.split(" ", 1)
    async with client_for(app, raise_app_exceptions=raise_app_exceptions) as client:
        return await client.request(method, path, **options)


def app_with(
    session: Callable[..., Any],
    routes: Mapping[str, Body],
    *,
    lifespan: Lifespan | None = None,
) -> FastAPI:
    """An app serving each ``"METHOD /path"`` of ``routes`` with its body.

    A body is an endpoint whose parameters annotated ``AsyncSession`` get the request's session
    from the ``session`` dependency (``db.session``, ``db.read_session``, ...); its other
    parameters are FastAPI's, as usual (path and query parameters, ``Response``, ...). Its
    annotations are resolved in its module, so they name module-level types only.
    """
    app = FastAPI(lifespan=lifespan)
    session_parameter = Annotated[AsyncSession, Depends(session)]
    for route, body in routes.items():
        method, path = route.split(" ", 1)
        app.add_api_route(path, _endpoint(body, session_parameter), methods=[method])
    return app


def _endpoint(body: Body, session_parameter: object) -> Body:
    """``body`` as an endpoint: its ``AsyncSession`` parameters turned into the dependency."""
    hints = typing.get_type_hints(body, include_extras=True)
    signature = inspect.signature(body)
    parameters = [
        parameter.replace(
            annotation=session_parameter
            if hints.get(parameter.name) is AsyncSession
            else hints.get(parameter.name, parameter.annotation)
        )
        for parameter in signature.parameters.values()
    ]

    async def endpoint(**arguments: Any) -> Any:
        return await body(**arguments)

    endpoint.__dict__["__signature__"] = signature.replace(
        parameters=parameters, return_annotation=hints.get("return", signature.return_annotation)
    )
    endpoint.__name__ = endpoint.__qualname__ = body.__name__
    endpoint.__doc__ = body.__doc__
    endpoint.__wrapped__ = body  # type: ignore[attr-defined]  # as functools.wraps says
    return endpoint


class ResponseStart:
    """Pure ASGI middleware: calls ``on_start()`` when the response begins to go out."""

    def __init__(self, app: ASGIApp, on_start: Callable[[], None]) -> None:
        self.app = app
        self.on_start = on_start

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def noting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.on_start()
            await send(message)

        await self.app(scope, receive, noting_send)


def assert_unavailable(response: httpx.Response, cause: str) -> None:
    """``response`` is a 503 with Retry-After and a JSON body naming ``cause``."""
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) > 0
    detail = response.json()["detail"]
    assert detail["cause"] == cause
    assert isinstance(detail["message"], str)
    assert detail["message"]


# -- the database, from outside dbscope -------------------------------------------------------


@contextlib.asynccontextmanager
async def admin(database_url: str) -> AsyncIterator[AsyncConnection]:
    """An autocommit connection of the test's own, outside dbscope."""
    engine = create_async_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            yield connection
    finally:
        await engine.dispose()


async def count_rows(database_url: str, table: str) -> int:
    """How many rows ``table`` holds, counted on a connection of the test's own."""
    async with admin(database_url) as connection:
        return int(await connection.scalar(text(f"SELECT count(*) FROM {table}")) or 0)


async def stored(db: Database, query: str) -> list[Any]:
    """The first column of every row ``query`` gives, read in a unit of work of its own."""
    async with db.transaction() as session:
        return list((await session.execute(text(query))).scalars())


def without_tables(database_url: str, *tables: str) -> Iterator[str]:
    """For a fixture: ``database_url``, with ``tables`` dropped (if there) before and after."""
    drop_tables(database_url, *tables)
    yield database_url
    drop_tables(database_url, *tables)


def run_script(script: str, *arguments: str) -> Any:
    """Run ``script`` in a process of its own with ``arguments`` (database URLs); what its
    last line says."""
    completed = subprocess.run(
        [sys.executable, "-c", script, *arguments],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(completed.stdout.splitlines()[-1])


def without_settings(**variables: str) -> dict[str, str]:
    """This process's environment for a subprocess that must see only a test's settings:
    without any variable a Database reads (``DATABASE_URL``, ``POSTGRES_*``, ``POOL_SIZE``,
    behind any prefix) or Alembic's ``ALEMBIC_CONFIG``, plus ``variables``."""
    names = [name.upper() for name in DatabaseSettings.model_fields]
    kept = {
        name: value
        for name, value in os.environ.items()
        if name != "ALEMBIC_CONFIG" and not any(name.endswith(setting) for setting in names)
    }
    return {**kept, **variables}


def imported_by(code: str, *packages: str) -> list[str]:
    """The modules of ``packages`` (each a package or module, with its submodules) loaded
    once ``code`` has run in a fresh interpreter, sorted; an error of ``code`` fails the test."""
    listing = (
        f"import json, sys\npackages = {packages!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules"
        " if any(m == p or m.startswith(p + '.') for p in packages))))\n"
    )
    script = f"{code}\n{listing}"
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return list(json.loads(completed.stdout.splitlines()[-1]))


def postgres_parts(database_url: str, password: str) -> dict[str, str]:
    """``POSTGRES_USER``, ``POSTGRES_PASSWORD``, ``POSTGRES_HOST``, ``POSTGRES_PORT`` and
    ``POSTGRES_DB`` naming ``database_url``'s database, with ``password``."""
    url = make_url(database_url)
    return {
        "POSTGRES_USER": url.username or "",
        "POSTGRES_PASSWORD": password,
        "POSTGRES_HOST": url.host or "",
        "POSTGRES_PORT": str(url.port or 5432),
        "POSTGRES_DB": url.database or "",
    }


class Tables:
    """The tables of one test, made on its database outside dbscope and dropped after it.

    The ``tables`` fixture (tests/conftest.py) gives one and drops what it made.
    """

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._made: list[str | MetaData] = []

    async def create(self, name: str, columns: str) -> None:
        """(Re)create the empty table ``name (columns)``, on any backend."""
        async with admin(self.database_url) as connection:
            await connection.execute(text(f"DROP TABLE IF EXISTS {name}"))
            await connection.execute(text(f"CREATE TABLE {name} ({columns})"))
        self._made.append(name)

    async def create_all(self, metadata: MetaData) -> None:
        """(Re)create the empty tables of ``metadata``."""
        async with admin(self.database_url) as connection:
            await connection.run_sync(metadata.drop_all)
            await connection.run_sync(metadata.create_all)
        self._made.append(metadata)

    async def drop_all(self) -> None:
        """Drop every table made, the last made first."""
        async with admin(self.database_url) as connection:
            for made in reversed(self._made):
                if isinstance(made, MetaData):
                    await connection.run_sync(made.drop_all)
                else:
                    await connection.execute(text(f"DROP TABLE {made}"))
        self._made.clear()


# -- faults -----------------------------------------------------------------------------------


async def wait_until_none(connection: AsyncConnection, count: str, **params: Any) -> None:
    """Wait until the ``count`` query, run on ``connection``, gives 0."""
    with anyio.fail_after(10):
        while True:
            if not (await connection.execute(text(count), params)).scalar_one():
                return
            await anyio.sleep(0.02)


async def kill_mid_request(
    database_url: str, app: FastAPI, request: Awaitable[httpx.Response]
) -> httpx.Response:
    """Send ``request`` and kill its server connection while the endpoint waits; its response.

    The endpoint tells ``app.state.backend_id`` and sets ``app.state.started``, then waits
    for ``app.state.release``, which is set once the backend is gone.
    """
    response = asyncio.ensure_future(request)
    await asyncio.wait_for(app.state.started.wait(), timeout=10)
    async with admin(database_url) as connection:
        await kill(connection, app.state.backend_id)
    app.state.release.set()
    with anyio.fail_after(10):
        return await response


async def kill(connection: AsyncConnection, backend_id: int) -> None:
    """End the server side of the connection ``backend_id``, and wait until it is gone."""
    if connection.dialect.name == "postgresql":
        await connection.execute(text("SELECT pg_terminate_backend(:id)"), {"id": backend_id})
        count = "SELECT count(*) FROM pg_stat_activity WHERE pid = :id"
    else:
        await connection.execute(text(f"KILL CONNECTION {int(backend_id)}"))
        count = "SELECT count(*) FROM information_schema.processlist WHERE id = :id"
    await wait_until_none(connection, count, id=backend_id)


async def connect_to_nothing(
    drivername: str, password: str
) -> tuple[Database, int, DatabaseUnavailableError]:
    """A Database of ``drivername`` on 127.0.0.1 at a port nothing listens on, that port, and
    the DatabaseUnavailableError its connect() raised."""
    port = free_port()
    db = Database(f"{drivername}://app:{password}@127.0.0.1:{port}/app")
    with pytest.raises(DatabaseUnavailableError) as info:
        await db.connect()
    return db, port, info.value


class TcpProxy:
    """A TCP proxy on 127.0.0.1 in front of a database server.

    ``cut()`` closes the listening socket and every proxied connection, so the server behind
    it is as unreachable as a crashed host: pooled connections die, new ones are refused.
    ``start()`` again listens on the same port. While ``silent`` is set, new connections are
    accepted and never answered, as by a server that hangs; while ``frozen`` is set, open
    ones carry nothing either way, as by a host that froze or a NAT that dropped them.
    While ``holds_ends`` is set, a connection the server ends is not ended for the client
    until ``cut()``: the client reads what the server said last (a FATAL) but never the end
    of the socket. ``accepted`` counts connections, ``ends_held`` those held so, and
    ``end_held`` is set at the first.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.accepted = 0
        self.silent = False
        self.frozen = False
        self.holds_ends = False
        self.ends_held = 0
        self.end_held = asyncio.Event()
        self._released = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Listen (on the same port as before, if any)."""
        self._released = asyncio.Event()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def cut(self) -> None:
        """Stop listening and close every proxied connection."""
        assert self._server is not None
        self._released.set()
        self._server.close()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        self._writers.clear()
        # Last: from Python 3.12.1 it waits for every accepted connection to be closed.
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        self.accepted += 1
        if self.silent:
            with contextlib.suppress(OSError):
                while await reader.read(65536):  # read and drop, until cut() closes it
                    pass
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.add(upstream_writer)
        await asyncio.gather(
            self._pipe(reader, upstream_writer),
            self._pipe(upstream_reader, writer, from_server=True),
        )

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        from_server: bool = False,
    ) -> None:
        try:
            while data := await reader.read(65536):
                if self.frozen:
                    continue  # dropped, and never acknowledged to the sender
                writer.write(data)
                await writer.drain()
            if from_server and self.holds_ends:
                self.ends_held += 1
                self.end_held.set()
                await self._released.wait()
        except OSError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def proxied(database_url: str) -> AsyncIterator[tuple[TcpProxy, str]]:
    """A running proxy in front of ``database_url``'s server, and the URL through it."""
    url = make_url(database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    try:
        yield proxy, url.set(port=proxy.port).render_as_string(hide_password=False)
    finally:
        await proxy.cut()


@contextlib.contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """Hold the file lock ``lock`` for the block: one holder at a time, whichever process
    (pytest-xdist's workers, two runs, a benchmark) asks."""
    with lock.open("a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)
