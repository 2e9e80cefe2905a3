"""``db.stream_response()``: a streamed response whose body runs in a unit of work of its own,
opened before the response starts.

A ``StreamingResponse`` sends its status and headers before its body runs: a unit opened at
the first chunk (``StreamingResponse(db.stream(rows))``) meets an exhausted pool or a
database down after the ``200`` went out, and can only cut the body short. This response
opens the unit, takes its connection and makes the first chunk first; an outage there is
answered before anything is sent, as ``Depends(db.session)`` answers it (503 with
``Retry-After``); any other error goes to the app's exception handlers. The whole unit lives
inside the response's call, so it ends there, whatever happens: never left for the garbage
collector. Its statements carry the request's route tags and id, as the request's own unit's
do; its background tasks run only once the stream has completed and committed.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.exception_handlers import http_exception_handler
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from dbscope.fastapi._dependencies import client_of
from dbscope.fastapi._errors import HANDLED, http_error
from dbscope.fastapi._tags import request_id, request_tags

if TYPE_CHECKING:
    from dbscope._settings import DatabaseSettings

# The chunks of one response, given the request's route tags and id.
Chunks = Callable[[Mapping[str, str], str | None], AsyncGenerator[Any, None]]


class UnitStreamingResponse(StreamingResponse):
    """A ``StreamingResponse`` of what ``chunks`` makes, in a unit of work of its own
    (``dbscope._streams.streamed``), that unit opened and its first chunk made before the
    response starts, given the route's tags and the request's id as the Database's
    ``settings`` say. Sent once."""

    def __init__(
        self,
        chunks: Chunks,
        settings: DatabaseSettings,
        *,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
    ) -> None:
        super().__init__((), status_code=status_code, headers=headers, media_type=media_type)
        self._chunks = chunks
        self._tagged = settings.sql_comments != "off"
        self._request_id_header = settings.request_id_header
        self._completed = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # In a task of its own, on a copy of the context: the unit sets itself as the
        # context's running unit, and the request's context must not keep it once sent.
        serving = self._serve(scope, receive, send)
        await asyncio.create_task(serving, context=contextvars.copy_context())

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        tags, named = {}, None
        if self._tagged:
            tags = request_tags(scope)
            named = request_id(Request(scope, receive), self._request_id_header)
        chunks = self._chunks(tags, named)
        # Starlette runs the background after a client gone too: here only once the stream
        # completed, its unit committed.
        background, self.background = self.background, None
        try:
            try:
                first = await anext(chunks, _NONE)
            except HANDLED as error:  # answered as Depends(db.session) answers it
                answer = await http_exception_handler(Request(scope, receive), http_error(error))
                await answer(scope, receive, send)
                return
            hung_up = _hang_up_check(scope, receive)
            if hung_up():
                return  # the client left while the first chunk was made: rolled back below
            self.body_iterator = self._after(first, chunks, hung_up)
            await super().__call__(scope, receive, send)
        finally:
            await chunks.aclose()  # a client gone midway: the unit rolls back here
        if self._completed and background is not None:
            await background()

    async def _after(
        self, first: Any, chunks: AsyncGenerator[Any, None], hung_up: Callable[[], bool]
    ) -> AsyncGenerator[Any, None]:
        if first is _NONE:
            self._completed = True
            return
        yield first
        async for chunk in chunks:
            if hung_up():
                return  # not completed: the unit rolls back in _serve
            yield chunk
        self._completed = True


_NONE = object()  # the body made no chunk: its unit has ended, committed


def _hang_up_check(scope: Scope, receive: Receive) -> Callable[[], bool]:
    """A check of whether the client hung up, where the server tells without a message
    (uvicorn); one that says no elsewhere.

    Starlette listens for it only once the response has started: a body of one chunk would
    otherwise commit for a client gone while it was made. Asked at each chunk too: chunks
    that need no wait (rows already fetched, asyncmy's unread backlog) give the event loop
    no turn once the client has gone (uvicorn drops the writes), so its hang-up never
    reached Starlette, and the stream ran to its end and committed. The transport says so
    at once, without a turn of the loop."""
    found = client_of(Request(scope, receive))
    if found is None:
        return lambda: False
    cycle = found[1]
    transport = getattr(cycle, "transport", None)
    return lambda: cycle.disconnected or (transport is not None and transport.is_closing())
