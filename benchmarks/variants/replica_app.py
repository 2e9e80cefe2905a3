"""The replica benchmark's app: a Database with a replica, two without, and their numbers.

``/db`` reads one row through ``Depends(db.read_session)`` on the Database with the replica
(``BENCH_REPLICA_URL``); ``/primary/db`` does the same on a Database without replicas, the
primary-only path, and ``/direct/db`` on a Database whose URL is the replica's, without
replicas: the replica's server without dbscope's routing. ``POST /write`` stores a client's
latest sequence number through ``Depends(db.session)`` (on the primary, a write token in the
answer: a cookie and a header, set by ``ReadYourWrites``); ``GET /read`` reads it back through
``db.read_session``, saying whether a replica served it. ``/stats`` shows what
``db.stats()`` counts for the replicas.
"""

# No `from __future__ import annotations`: FastAPI must resolve the endpoints' annotations,
# which name the aliases made inside replica_app().
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Annotated, Final

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from benchmarks.replica_cluster import PAIRS_TABLE, REPLICA_URL
from benchmarks.variants.common import NODB_BODY, bench_settings, orm_one
from dbscope import Database
from dbscope.fastapi import ReadYourWrites

WRITE: Final = text(
    f"INSERT INTO {PAIRS_TABLE} (client, seq) VALUES (:client, :seq) "
    "ON CONFLICT (client) DO UPDATE SET seq = excluded.seq"
)
# Whether the server that answered is a replica: asked in the read's own transaction.
READ: Final = text(
    f"SELECT (SELECT seq FROM {PAIRS_TABLE} WHERE client = :client), pg_is_in_recovery()"
)


def replica_app(replicated: Database, primary_only: Database, direct: Database) -> FastAPI:
    """The endpoints above, on ``replicated`` (with replicas), ``primary_only`` and
    ``direct`` (the replica's URL as its own)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with replicated.lifespan(app), primary_only.lifespan(app), direct.lifespan(app):
            yield

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(ReadYourWrites)
    Session = Annotated[AsyncSession, Depends(replicated.session)]
    ReadSession = Annotated[AsyncSession, Depends(replicated.read_session)]
    PrimaryRead = Annotated[AsyncSession, Depends(primary_only.read_session)]
    DirectRead = Annotated[AsyncSession, Depends(direct.read_session)]

    @app.get("/db")
    async def one(session: ReadSession) -> JSONResponse:
        return JSONResponse(await orm_one(session))

    @app.get("/primary/db")
    async def one_on_primary(session: PrimaryRead) -> JSONResponse:
        return JSONResponse(await orm_one(session))

    @app.get("/direct/db")
    async def one_on_replica_server(session: DirectRead) -> JSONResponse:
        return JSONResponse(await orm_one(session))

    @app.post("/write")
    async def write(session: Session, client: int, seq: int) -> JSONResponse:
        await session.execute(WRITE, {"client": client, "seq": seq})
        return JSONResponse({"client": client, "seq": seq})  # committed before the response

    @app.get("/read")
    async def read(session: ReadSession, client: int) -> JSONResponse:
        seq, on_replica = (await session.execute(READ, {"client": client})).one()
        return JSONResponse({"client": client, "seq": seq, "replica": on_replica})

    @app.get("/stats")
    async def stats() -> JSONResponse:
        numbers = replicated.stats()
        replicas = [
            {"state": r.state, "lag": r.lag, "served": r.served, "reason": r.reason}
            for r in numbers.replicas
        ]
        return JSONResponse({"replicas": replicas, "fallbacks": dict(numbers.fallbacks)})

    @app.get("/nodb")
    async def nodb() -> JSONResponse:
        return JSONResponse(NODB_BODY)

    return app


settings = bench_settings()
replica_url = os.environ.get("BENCH_REPLICA_URL", REPLICA_URL)
replica_url = replica_url.replace("postgresql://", "postgresql+asyncpg://", 1)
app = replica_app(
    Database(
        settings.sqlalchemy_url,
        replicas=[replica_url],
        pool_name="replicated",
        **settings.dbscope_options,
    ),
    Database(settings.sqlalchemy_url, pool_name="primary only", **settings.dbscope_options),
    Database(replica_url, pool_name="replica direct", **settings.dbscope_options),
)
