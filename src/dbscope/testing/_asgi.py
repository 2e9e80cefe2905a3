"""Running an ASGI app in-process as a server would: its lifespan, and an HTTP client for it.

Nothing here knows about databases: :func:`running_app` and :func:`client` serve any ASGI
app (FastAPI and Starlette apps fit). httpx is imported only when :func:`client` is called.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

# The ASGI callable, in the words of the ASGI specification.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@contextlib.asynccontextmanager
async def running_app(app: ASGIApp) -> AsyncIterator[ASGIApp]:
    """Start ``app`` as a server would, and shut it down at the end: the ASGI lifespan.

    The lifespan runs in a task of its own, as under uvicorn, so it may enter and exit task
    groups freely. An exception raised at start-up or shutdown propagates unchanged. An app
    that does not speak the lifespan protocol (it returns, or raises, before asking for its
    first message) runs without one, as the ASGI specification tells servers to.

    Yields:
        The app to send requests to: it hands the lifespan's state (what a lifespan yields)
        to each request as ``request.state``, as servers do.
    """
    state: dict[str, Any] = {}
    to_app: asyncio.Queue[Message] = asyncio.Queue()
    from_app: asyncio.Queue[Message] = asyncio.Queue()
    scope: Scope = {
        "type": "lifespan",
        "asgi": {"version": "3.0", "spec_version": "2.0"},
        "state": state,
    }

    listening = asyncio.Event()  # the app asked for a message: it has a lifespan

    async def receive() -> Message:
        listening.set()
        return await to_app.get()

    async def run_lifespan() -> None:
        await app(scope, receive, from_app.put)

    task = asyncio.create_task(run_lifespan())
    try:
        await to_app.put({"type": "lifespan.startup"})
        started = await _lifespan_reply(task, from_app, "startup", listening)
    except BaseException:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise
    try:
        yield _with_state(app, state)
    finally:
        if started:  # else the task has ended already, its outcome seen
            await to_app.put({"type": "lifespan.shutdown"})
            await _lifespan_reply(task, from_app, "shutdown", listening)
            await task


def _with_state(app: ASGIApp, state: dict[str, Any]) -> ASGIApp:
    """``app``, handing each request a copy of the lifespan's ``state``, as servers do."""

    async def app_with_state(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "state": state.copy()}
        await app(scope, receive, send)

    return app_with_state


async def _lifespan_reply(
    task: asyncio.Task[None], replies: asyncio.Queue[Message], step: str, listening: asyncio.Event
) -> bool:
    """Wait for the app's answer to ``lifespan.<step>``; False if it has no lifespan."""
    reply = asyncio.ensure_future(replies.get())
    await asyncio.wait({reply, task}, return_when=asyncio.FIRST_COMPLETED)
    if not reply.done():
        reply.cancel()
        if task.exception() is not None and listening.is_set():
            task.result()  # raises the app's own exception: its start-up or shutdown failed
        # It returned without answering, or raised on the lifespan scope before asking for a
        # message (an app for HTTP alone): it has no lifespan.
        return False
    message = reply.result()
    if message["type"] == f"lifespan.{step}.failed":
        if task.done():
            task.result()  # Starlette re-raises the error after reporting it: raise that one
        else:
            task.cancel()
        detail = message.get("message") or "no reason given"
        raise RuntimeError(f"The app's lifespan {step} failed: {detail}")
    return True


@contextlib.asynccontextmanager
async def client(
    app: ASGIApp, *, base_url: str = "http://testserver"
) -> AsyncIterator[httpx.AsyncClient]:
    """An ``httpx.AsyncClient`` that sends requests to ``app`` in-process, inside its lifespan.

    An exception the app does not handle is raised in the test (the client does not turn it
    into a 500). Needs httpx: ``pip install 'dbscope[testing]'``.
    """
    try:
        import httpx
    except ModuleNotFoundError as error:  # pragma: no cover - exercised only without httpx
        message = "dbscope.testing.client needs httpx: pip install 'dbscope[testing]'"
        raise ModuleNotFoundError(message, name=error.name) from error
    async with running_app(app) as running:
        transport = httpx.ASGITransport(app=running)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as http:
            yield http
