"""The notes service: authors and their notes over HTTP, on dbscope's public API only.

Run it from the repository root with ``make demo``, which applies the migrations
(``dbscope migrate``, migrations/) and then serves ``python -m examples.notes``. It uses
``DATABASE_URL`` (read by ``Database.from_env()``) when set, and otherwise a SQLite file,
``notes.db``, in the current directory.

The application is built by :func:`create_app` from a :class:`dbscope.Database`, with the
routers of routes.py; ``app`` below is the one uvicorn serves, and the one the tests use:
dbscope's pytest plugin runs its ``db`` in each test's transaction, on the test database
(see conftest.py).
"""

from pathlib import Path
from typing import Final

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from dbscope import Database
from dbscope.fastapi import health_router

from .routes import authors_router, notes_router

DEFAULT_URL: Final = "sqlite+aiosqlite:///notes.db"


def database_from_env() -> Database:
    """The database the environment names (``DATABASE_URL`` or ``POSTGRES_*``), else the
    SQLite file ``notes.db``.

    ``from_env()`` also reads ``POOL_SIZE``, ``POOL_TIMEOUT`` and the other settings; see
    docs/configuration.md.
    """
    return Database.from_env(default_url=DEFAULT_URL)


async def refuse_invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    """422 naming each invalid field, as FastAPI's own handler does, without the input.

    FastAPI's handler echoes each invalid value back. That can be 20 MB of note, or a string
    with a lone surrogate (valid JSON, not valid Unicode) that no UTF-8 response can carry:
    rendering the 422 would then fail with a 500. The client sent the input; it has it.
    """
    detail = [{key: value for key, value in e.items() if key != "input"} for e in error.errors()]
    return JSONResponse({"detail": jsonable_encoder(detail)}, status_code=422)


def create_app(db: Database) -> FastAPI:
    """Build the notes service on ``db``; the app connects and disposes it in its lifespan.

    The tables are the migrations' (``dbscope migrate upgrade head``, before the service
    starts): several instances starting at once never race to change them.
    """
    app = FastAPI(
        title="Notes (dbscope example)",
        lifespan=db.lifespan,
        exception_handlers={RequestValidationError: refuse_invalid_request},
    )
    # /readyz fails until the database is at the migrations' head: no traffic before then.
    health = health_router(db, migrations=Path(__file__).with_name("alembic.ini"))
    for router in (authors_router(db), notes_router(db), health):
        app.include_router(router)
    return app


db = database_from_env()
app = create_app(db)
