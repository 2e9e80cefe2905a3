"""``db.stream()``: a streamed body run in a unit of work of its own, committed only if the
stream completes.

A streamed response starts (its status and headers sent) before its body runs. Iterated as it
is, the stream opens its unit at the first chunk asked for: a pool exhausted or a database
down then cuts a 200 short, where every other endpoint answers 503. Awaited in the endpoint,
the stream opens its unit and makes its first chunk there, before the response starts.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator
from typing import Any, Generic

from sqlalchemy.ext.asyncio import AsyncSession

from dbscope._retry import T
from dbscope._unit_of_work import UnitRun


class Stream(Generic[T]):
    """What ``db.stream(body)`` returns: ``body``'s chunks, made in a unit of work of its own.

    ``StreamingResponse(await db.stream(rows))``: the unit opens, takes its connection and
    makes its first chunk in the endpoint, so that an exhausted pool or a database down is
    the endpoint's 503, and an error of the first query its answer, before the response
    starts. ``StreamingResponse(db.stream(rows))``: the unit opens at the first chunk the
    server asks for, after the 200 is sent; a failure then cuts the body short.

    Either way the unit commits once the last chunk is made, and rolls back if the client
    goes away or anything raises before then.
    """

    def __init__(
        self, body: Callable[[AsyncSession], AsyncIterator[T]], open_unit: Callable[[], UnitRun]
    ) -> None:
        self._body = body
        self._open_unit = open_unit

    def __aiter__(self) -> AsyncIterator[T]:
        return self._chunks()

    def __await__(self) -> Generator[Any, None, AsyncIterator[T]]:
        return self._started().__await__()

    async def _started(self) -> AsyncIterator[T]:
        chunks = self._chunks()
        try:
            first = await anext(chunks)
        except StopAsyncIteration:  # no chunk at all: the unit has ended already
            return _nothing()
        return _after(first, chunks)

    async def _chunks(self) -> AsyncGenerator[T, None]:
        async with self._open_unit() as unit:
            items = self._body(unit.session)
            try:
                async for item in items:
                    yield item
            finally:
                # A stream cut short: the body's own clean-up runs now, in its unit, rather
                # than when the event loop finalizes the generator, after the unit has ended.
                close = getattr(items, "aclose", None)
                if close is not None:
                    await close()


async def _after(first: T, chunks: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
    """``first``, then the rest of ``chunks``, closed with this generator."""
    try:
        yield first
        async for chunk in chunks:
            yield chunk
    finally:
        await chunks.aclose()


async def _nothing() -> AsyncGenerator[Any, None]:
    return
    yield  # an async generator that yields nothing
