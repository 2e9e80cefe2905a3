"""``db.stream_response()``: a streamed response whose body runs in a unit of work of its own,
opened before the response starts.

A ``StreamingResponse`` sends its status and headers before its body runs: a unit opened at
the first chunk (``StreamingResponse(db.stream(rows))``) meets an exhausted pool or a
database down after the ``200`` went out, and can only cut the body short. This response
opens the unit, takes its connection and makes the first chunk first; what fails there is
answered before anything is sent, as ``Depends(db.session)`` answers it (503 with
``Retry-After``); any other error goes to the app's exception handlers. The whole unit lives
inside the response's call, so it ends there, whatever happens: never left for the garbage
collector.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from fastapi import Request
from fastapi.exception_handlers import http_exception_handler
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from dbscope.fastapi._errors import HANDLED, http_error


class UnitStreamingResponse(StreamingResponse):
    """A ``StreamingResponse`` of ``chunks``, made in a unit of work of its own
    (``dbscope._streams.streamed``), that unit opened and its first chunk made before the
    response starts. Sent once."""

    def __init__(
        self,
        chunks: AsyncGenerator[Any, None],
        *,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        super().__init__(
            (),
            status_code=status_code,
            headers=headers,
            media_type=media_type,
            background=background,
        )
        self._chunks = chunks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # In a task of its own, on a copy of the context: the unit sets itself as the
        # context's running unit, and the request's context must not keep it once sent.
        serving = self._serve(scope, receive, send)
        await asyncio.create_task(serving, context=contextvars.copy_context())

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks = self._chunks
        try:
            try:
                first = await anext(chunks)  # opens the unit: its failure is sent no 200
            except StopAsyncIteration:  # no chunk: the unit has ended, committed
                self.body_iterator = _none()
            except HANDLED as error:  # answered as Depends(db.session) answers it
                answer = await http_exception_handler(Request(scope, receive), http_error(error))
                await answer(scope, receive, send)
                return
            else:
                self.body_iterator = _after(first, chunks)
            await super().__call__(scope, receive, send)
        finally:
            await chunks.aclose()  # a client gone midway: the unit rolls back here


async def _after(first: Any, chunks: AsyncGenerator[Any, None]) -> AsyncGenerator[Any, None]:
    yield first
    async for chunk in chunks:
        yield chunk


async def _none() -> AsyncGenerator[Any, None]:
    return
    yield  # an async generator that yields nothing
