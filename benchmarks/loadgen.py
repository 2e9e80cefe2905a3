"""A small HTTP/1.1 load generator on asyncio streams, for the smoke mode and the overload.

wrk measures throughput better, but it reports neither each status code nor when each
response arrived; the overload scenario needs both, and the smoke test must run where wrk is
not installed. Each client keeps one keep-alive connection to 127.0.0.1 and sends one request
after another until the deadline; requests still in flight then are abandoned (their
connections closed) and not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import time
from collections import Counter
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

HOST: Final = "127.0.0.1"
# A server that refuses or drops connections must not turn a client into a busy loop.
ERROR_PAUSE: Final = 0.01

T = TypeVar("T")


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on uvloop when it is installed (a faster client), else on asyncio."""
    try:
        uvloop = importlib.import_module("uvloop")
    except ModuleNotFoundError:
        return asyncio.run(coroutine)
    result: T = uvloop.run(coroutine)
    return result


@dataclass(frozen=True)
class Response:
    """One completed request: when it was sent (seconds after the start), how long it took,
    and its status."""

    sent: float
    latency: float
    status: int


class ServerClosed(ConnectionError):
    """The server closed a keep-alive connection before answering the next request on it."""


@dataclass
class LoadResult:
    """Everything a load run saw.

    Attributes:
        duration: seconds of load.
        responses: every response that arrived before the deadline.
        transport_errors: requests that got no response (refused, reset, timed out).
        reconnects: keep-alive connections the server closed between two requests (as
            uvicorn does after a 500); the request is sent again on a new connection.
        unanswered: for each request still in flight when the load ended, the seconds it had
            waited by then: a lower bound of its latency, which no percentile of the
            responses shows.
    """

    duration: float
    responses: list[Response] = field(default_factory=list)
    transport_errors: int = 0
    reconnects: int = 0
    unanswered: list[float] = field(default_factory=list)

    @property
    def statuses(self) -> Counter[int]:
        """How many responses had each status."""
        return Counter(response.status for response in self.responses)

    @property
    def requests_per_second(self) -> float:
        """Completed responses per second of load."""
        return len(self.responses) / self.duration if self.duration else 0.0

    @property
    def sent_after_end(self) -> int:
        """Responses to requests sent after the load was to end: 0 unless a client missed
        its stop and ran on."""
        return sum(1 for response in self.responses if response.sent > self.duration)


def percentile(values: list[float], fraction: float) -> float | None:
    """The ``fraction`` quantile (nearest rank) of ``values``, or None if there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[rank]


def request_bytes(path: str, headers: Mapping[str, str] | None = None) -> bytes:
    """A keep-alive GET for ``path`` on 127.0.0.1, with ``headers`` besides its own."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    return (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: dbscope-bench\r\n{extra}\r\n"
    ).encode()


@dataclass(frozen=True)
class Head:
    """What a client acts on in a response: its status, whether the connection stays open,
    and the seconds ``Retry-After`` asks it to wait (None without the header)."""

    status: int
    keep_alive: bool
    retry_after: float | None


async def read_response(reader: asyncio.StreamReader) -> Head:
    """Read one response, body included; return what a client acts on.

    Raises:
        ServerClosed: the connection ended before a single byte of the response.
    """
    try:
        status_line = await reader.readuntil(b"\r\n")
    except asyncio.IncompleteReadError as error:
        if not error.partial:
            raise ServerClosed from error
        raise
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        message = f"Not an HTTP response: {status_line[:80]!r}"
        raise ConnectionError(message)
    status = int(parts[1])
    length: int | None = None
    chunked = False
    keep_alive = True
    retry_after: float | None = None
    while True:
        line = await reader.readuntil(b"\r\n")
        if line == b"\r\n":
            break
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value:
            chunked = True
        elif name == b"connection" and value == b"close":
            keep_alive = False
        elif name == b"retry-after" and value.isdigit():
            retry_after = float(value)
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length is not None:
        await reader.readexactly(length)
    else:
        await reader.read()  # the body ends when the server closes the connection
        keep_alive = False
    return Head(status, keep_alive, retry_after)


class _Client:
    """One connection sending requests one after another; with ``back_off``, a client that
    waits as ``Retry-After`` asks (as urllib3's retries do) before its next request."""

    def __init__(
        self,
        port: int,
        request: bytes,
        start: float,
        result: LoadResult,
        *,
        back_off: bool,
    ) -> None:
        self.back_off = back_off
        self.port = port
        self.request = request
        self.start = start
        self.result = result
        self.writer: asyncio.StreamWriter | None = None
        # When the request in flight was sent (time.monotonic()); None between requests.
        self.sent_at: float | None = None

    async def run(self, deadline: float, wait: float) -> None:
        reader: asyncio.StreamReader | None = None
        try:
            while time.monotonic() < deadline:
                reused = reader is not None
                try:
                    if reader is None:
                        reader = await self._connect(wait)
                    sent = self.sent_at = time.monotonic()
                    # Not wait_for: on Python 3.11 it can swallow the cancel that ends the
                    # load when its request completes at that moment, and the client then
                    # ran on to the deadline (a smoke run took 272 s instead of 30).
                    async with asyncio.timeout(wait):
                        head = await self._send(reader)
                except (OSError, EOFError, ValueError, TimeoutError) as error:
                    self.sent_at = None
                    self.close()
                    reader = None
                    if reused and isinstance(error, ServerClosed | ConnectionError):
                        self.result.reconnects += 1
                    else:
                        self.result.transport_errors += 1
                        await asyncio.sleep(ERROR_PAUSE)
                    continue
                latency = time.monotonic() - sent
                self.sent_at = None
                self.result.responses.append(Response(sent - self.start, latency, head.status))
                if not head.keep_alive:
                    self.close()
                    reader = None
                if self.back_off and head.retry_after is not None:
                    await asyncio.sleep(
                        min(head.retry_after, max(0.0, deadline - time.monotonic()))
                    )
        finally:
            self.close()

    async def _connect(self, wait: float) -> asyncio.StreamReader:
        async with asyncio.timeout(wait):
            reader, self.writer = await asyncio.open_connection(HOST, self.port)
        return reader

    async def _send(self, reader: asyncio.StreamReader) -> Head:
        if self.writer is None:
            raise ServerClosed
        self.writer.write(self.request)
        return await read_response(reader)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def run_load(
    port: int,
    path: str,
    *,
    connections: int,
    duration: float,
    wait: float = 30.0,
    back_off: bool = False,
    headers: Mapping[str, str] | None = None,
    until: asyncio.Event | None = None,
) -> LoadResult:
    """Send requests for ``path`` over ``connections`` connections for ``duration`` seconds.

    With ``back_off``, each client waits as a response's ``Retry-After`` asks. Every request
    carries ``headers``. With ``until``, the load ends as soon as that event is set, if
    before ``duration``; the result's duration is then the seconds it ran.

    A request that gets no response within ``wait`` seconds counts as a transport error.
    Requests in flight at the deadline are abandoned: their connections are closed, as a
    load balancer's would be, and only how long they had waited is kept (``unanswered``).
    """
    start = time.monotonic()
    deadline = start + duration
    result = LoadResult(duration=duration)
    request = request_bytes(path, headers)
    clients = [_Client(port, request, start, result, back_off=back_off) for _ in range(connections)]
    tasks = [asyncio.create_task(client.run(deadline, wait)) for client in clients]
    try:
        if until is None:
            await asyncio.sleep(duration)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until.wait(), duration)
            result.duration = time.monotonic() - start
    finally:
        ended = time.monotonic()
        result.unanswered = [ended - c.sent_at for c in clients if c.sent_at is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return result


async def fetch_status(port: int, path: str, wait: float) -> int | None:
    """One request on a fresh connection; its status, or None if none came within ``wait`` s."""
    writer: asyncio.StreamWriter | None = None
    try:
        reader, opened = await asyncio.wait_for(asyncio.open_connection(HOST, port), wait)
        writer = opened
        opened.write(request_bytes(path))
        head = await asyncio.wait_for(read_response(reader), wait)
    except (OSError, EOFError, ValueError, TimeoutError):
        return None
    finally:
        if writer is not None:
            writer.close()
    return head.status
