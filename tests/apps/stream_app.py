"""The app behind tests/reliability/test_streaming.py and test_cancellation.py, run by uvicorn.

Configured from the environment: ``DATABASE_URL``, ``POOL_SIZE``, ``MAX_OVERFLOW``,
``APPLICATION_NAME`` (read by ``Database.from_env()``), ``STREAM_CHUNK_PAUSE`` (seconds between
the chunks of ``/rows``) and ``STREAM_SLEEP`` (seconds ``/sleep`` spends in ``pg_sleep``). The
tests create the tables.

The process keeps every warning, every log line at WARNING or above and every exception that
escapes the app, and prints none of them: ``/stats`` hands them to the test (which can tell
from them whether a connection was left to the garbage collector), and a server whose output
nobody reads never blocks on a full pipe.
"""

import asyncio
import dataclasses
import logging
import os
import warnings
from collections.abc import AsyncIterator
from typing import Any

from fastapi import BackgroundTasks, FastAPI
from fastapi.responses import StreamingResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dbscope import Database

CHUNK_PAUSE = float(os.environ.get("STREAM_CHUNK_PAUSE", "0.2"))
SLEEP = float(os.environ.get("STREAM_SLEEP", "0.5"))
CHUNKS = 5

seen_warnings: list[str] = []
log_lines: list[str] = []
errors: list[str] = []
# The sleeps of /sleep begun and completed; the background tasks of /one run.
counters = {"started": 0, "finished": 0, "background": 0, "buffered_chunks": 0}
BUFFERED_CHUNKS = 2000


def record_warning(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """Keep a warning for ``/stats`` instead of printing it."""
    seen_warnings.append(f"{category.__name__}: {message}")


class LogLines(logging.Handler):
    """Keep log lines for ``/stats`` (as ``logger: message``) instead of printing them."""

    def emit(self, record: logging.LogRecord) -> None:
        log_lines.append(f"{record.name}: {record.getMessage()}")


class KeepErrors:
    """Pure ASGI middleware: keep an exception that escapes the app instead of logging it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as error:
            errors.append(repr(error))
            if not started:
                await send({"type": "http.response.start", "status": 500, "headers": []})
                await send({"type": "http.response.body", "body": b"error"})


warnings.simplefilter("always")
warnings.showwarning = record_warning
logging.getLogger().addHandler(LogLines(logging.WARNING))

db = Database.from_env()
app = FastAPI(lifespan=db.lifespan)
app.add_middleware(KeepErrors)


@app.get("/rows/{tag}")
async def stream_rows(tag: str) -> StreamingResponse:
    """Five chunks; each inserts its row into ``st_rows``, then goes out."""

    async def rows(session: AsyncSession) -> AsyncIterator[str]:
        insert = text("INSERT INTO st_rows (tag, number) VALUES (:tag, :number)")
        for number in range(CHUNKS):
            if number:
                await asyncio.sleep(CHUNK_PAUSE)
            await session.execute(insert, {"tag": tag, "number": number})
            yield f"{tag} {number}\n"

    return db.stream_response(rows, media_type="text/plain")


@app.get("/one/{tag}")
async def stream_one(tag: str, background: BackgroundTasks) -> StreamingResponse:
    """One chunk, made ``STREAM_CHUNK_PAUSE`` s after the unit's first write; a background
    task counted in ``counters["background"]``."""

    async def one(session: AsyncSession) -> AsyncIterator[str]:
        insert = text("INSERT INTO st_rows (tag, number) VALUES (:tag, 0)")
        await session.execute(insert, {"tag": tag})
        await asyncio.sleep(CHUNK_PAUSE)
        yield f"{tag}\n"

    background.add_task(counters.__setitem__, "background", counters["background"] + 1)
    return db.stream_response(one, media_type="text/plain")


@app.get("/buffered/{tag}")
async def stream_buffered(tag: str) -> StreamingResponse:
    """A row written, then ``BUFFERED_CHUNKS`` lines of 8 KB made without waiting for
    anything, as from rows already fetched; counted in ``counters["buffered_chunks"]``."""

    async def lines(session: AsyncSession) -> AsyncIterator[str]:
        insert = text("INSERT INTO st_rows (tag, number) VALUES (:tag, 0)")
        await session.execute(insert, {"tag": tag})
        for number in range(BUFFERED_CHUNKS):
            counters["buffered_chunks"] += 1
            yield f"{tag} {number} {'x' * 8192}\n"

    return db.stream_response(lines, media_type="text/plain")


@app.get("/sleep")
async def stream_sleep() -> StreamingResponse:
    """One chunk once the transaction has begun, then a long ``pg_sleep``, then the last."""

    async def body(session: AsyncSession) -> AsyncIterator[str]:
        await session.execute(text("SELECT 1"))
        yield "started\n"
        counters["started"] += 1
        await session.execute(text("SELECT pg_sleep(:seconds)"), {"seconds": SLEEP})
        counters["finished"] += 1
        yield "done\n"

    return StreamingResponse(db.stream(body, read_only=True), media_type="text/plain")


@app.get("/stats")
async def stats() -> dict[str, Any]:
    """The pool's numbers, the sleeps counted, and the warnings, log lines and errors so far."""
    return {
        "pool": dataclasses.asdict(db.stats()),
        "counters": counters,
        "warnings": seen_warnings,
        "log": log_lines,
        "errors": errors,
    }
