"""A streamed body run in a unit of work of its own, committed only if the stream completes:
``db.stream()``'s iterator, and what ``db.stream_response()`` sends."""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import cast

from dbscope._async_session import SessionT
from dbscope._exceptions import ConfigurationError
from dbscope._retry import T
from dbscope._unit_of_work import UnitRun


def checked_body(body: object, call: str) -> None:
    """Refuse a ``body`` that is no function of the session, at ``call``, not at the first
    chunk (after a 200)."""
    # A coroutine function (an `async def` without `yield`) failed at the first chunk, after
    # a 200, and a generator function (a `def` with `yield`) at the first request, with
    # Python's "'async for' requires an object with __aiter__". A plain function returning an
    # async iterator (a lambda) is taken on trust.
    function = inspect.unwrap(body) if callable(body) else None
    if function is None or inspect.iscoroutinefunction(function):
        message = (
            f"{call} takes the body as a function of the session that yields its chunks "
            f"(`async def rows(session): ... yield chunk`), not {body!r}"
        )
        raise ConfigurationError(message)
    if inspect.isgeneratorfunction(function):
        message = (
            f"{call} takes an async generator function as the body, and {body!r} is a plain "
            "generator function: write it `async def` (`async def rows(session): ... yield "
            "chunk`), so that its queries can be awaited"
        )
        raise ConfigurationError(message)


async def streamed(
    body: Callable[[SessionT], AsyncIterator[T]], open_unit: Callable[[], UnitRun]
) -> AsyncGenerator[T, None]:
    """``body`` run in a unit of work of its own, opened at the first chunk asked for."""
    async with open_unit() as unit:
        # Take the connection before the body runs: a body whose first chunk needs no query
        # (a CSV header) would otherwise let stream_response() send its 200 first.
        await unit.session.connection()
        items = body(cast("SessionT", unit.session))  # of the Database's session class
        try:
            async for item in items:
                yield item
        finally:
            # A stream cut short: the body's own clean-up runs now, in its unit, rather than
            # when the event loop finalizes the generator, after the unit has ended.
            close = getattr(items, "aclose", None)
            if close is not None:
                await close()
