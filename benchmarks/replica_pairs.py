"""Write-then-read pairs across HTTP requests: does a client always read its own write?

Each client is an ``httpx.AsyncClient`` of its own: it stores its next sequence number with
``POST /write`` (on the primary) and reads it back with ``GET /read`` (a read-only request,
routed to the replica when the replica has the write). Half the clients carry the write token
in their cookie jar, as a browser does; the others keep no cookie and echo the token header
of the write's answer, as an API client does. A read that returns an older number (or none)
is stale. The read answers whether the replica served it, from ``pg_is_in_recovery()`` in
its own transaction, and ``/stats`` (``db.stats()``) says why the others went to the primary.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any, Final, Literal

import httpx

from benchmarks import loadgen
from benchmarks.servers import HOST
from dbscope.fastapi import ReadYourWrites

Mode = Literal["cookie", "header"]
MODES: Final[tuple[Mode, ...]] = ("cookie", "header")
# The header the app's ReadYourWrites (its defaults) sends the tokens in, and reads them from.
TOKEN_HEADER: Final[str] = inspect.signature(ReadYourWrites).parameters["header_name"].default
REQUEST_TIMEOUT: Final = 10.0


@dataclass(frozen=True)
class Phase:
    """One set of pairs: the replica's apply delay, and the client's pause before its read."""

    label: str
    delay_ms: int
    pause_ms: int


@dataclass
class Tally:
    """What the clients of one mode saw."""

    pairs: int = 0
    stale: int = 0
    on_replica: int = 0
    unanswered: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    read_latencies: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class PairsResult:
    """One phase's figures; latencies in milliseconds, counts of reads unless said."""

    label: str
    delay_ms: int
    pause_ms: int
    clients: int
    asked: int
    pairs: int
    stale: int
    on_replica: int
    on_primary: int
    replica_share: float
    failed: dict[str, int]
    by_mode: dict[str, dict[str, int]]
    served_by_replica: int
    fallbacks: dict[str, int]
    read_p50_ms: float | None
    read_p99_ms: float | None
    seconds: float

    def as_json(self) -> dict[str, Any]:
        """The result as plain JSON data."""
        return asdict(self)


async def stats(port: int) -> dict[str, Any]:
    """What the app's ``/stats`` shows: each replica's state and reads, the fallbacks."""
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT) as http:
        response = await http.get(f"http://{HOST}:{port}/stats")
        response.raise_for_status()
        numbers: dict[str, Any] = response.json()
        return numbers


def served(numbers: dict[str, Any]) -> int:
    """The reads every replica has served, from ``/stats``."""
    return sum(int(replica["served"]) for replica in numbers["replicas"])


def jar(mode: Mode) -> CookieJar:
    """A client's cookie jar; the header clients' keeps nothing, so only the header counts."""
    return CookieJar() if mode == "cookie" else CookieJar(DefaultCookiePolicy(allowed_domains=[]))


async def _client(
    port: int, client: int, mode: Mode, seqs: range, pause: float, deadline: float, tally: Tally
) -> None:
    base = f"http://{HOST}:{port}"
    async with httpx.AsyncClient(base_url=base, cookies=jar(mode), timeout=REQUEST_TIMEOUT) as http:
        echo: dict[str, str] = {}
        for seq in seqs:
            if time.monotonic() > deadline:
                return
            try:
                written = await http.post("/write", params={"client": client, "seq": seq})
                if written.status_code != 200:
                    tally.statuses[written.status_code] += 1
                    continue
                if mode == "header" and TOKEN_HEADER in written.headers:
                    echo = {TOKEN_HEADER: written.headers[TOKEN_HEADER]}
                if pause:
                    await asyncio.sleep(pause)
                sent = time.monotonic()
                read = await http.get("/read", params={"client": client}, headers=echo)
            except httpx.HTTPError:
                tally.unanswered += 1
                continue
            tally.read_latencies.append(time.monotonic() - sent)
            if read.status_code != 200:
                tally.statuses[read.status_code] += 1
                continue
            body = read.json()
            tally.pairs += 1
            tally.stale += body["seq"] is None or body["seq"] < seq
            tally.on_replica += bool(body["replica"])


async def run_phase(
    port: int, phase: Phase, *, pairs: int, clients: int, limit: float, first: int
) -> PairsResult:
    """``pairs`` write-then-read pairs over ``clients`` clients, within ``limit`` seconds.

    Each client writes the numbers ``first``, ``first + 1``...: a later phase starts above the
    numbers of the one before (its rows are not emptied), so an older number read is stale.
    """
    tallies = {mode: Tally() for mode in MODES}
    before = await stats(port)
    started = time.monotonic()
    deadline = started + limit
    tasks = []
    for client in range(clients):
        mode = MODES[client % 2]
        seqs = range(first, first + pairs // clients + (client < pairs % clients))
        pause = phase.pause_ms / 1000
        tasks.append(_client(port, client, mode, seqs, pause, deadline, tallies[mode]))
    await asyncio.gather(*tasks)
    seconds = time.monotonic() - started
    after = await stats(port)
    return _result(phase, tallies, before, after, asked=pairs, clients=clients, seconds=seconds)


def _result(
    phase: Phase,
    tallies: dict[Mode, Tally],
    before: dict[str, Any],
    after: dict[str, Any],
    *,
    asked: int,
    clients: int,
    seconds: float,
) -> PairsResult:
    total = Tally()
    for tally in tallies.values():
        total.pairs += tally.pairs
        total.stale += tally.stale
        total.on_replica += tally.on_replica
        total.unanswered += tally.unanswered
        total.statuses.update(tally.statuses)
        total.read_latencies += tally.read_latencies
    failed = {str(status): n for status, n in sorted(total.statuses.items())}
    if total.unanswered:
        failed["no answer"] = total.unanswered
    fallbacks = Counter(after["fallbacks"])
    fallbacks.subtract(before["fallbacks"])
    p50 = loadgen.percentile(total.read_latencies, 0.50)
    p99 = loadgen.percentile(total.read_latencies, 0.99)
    return PairsResult(
        label=phase.label,
        delay_ms=phase.delay_ms,
        pause_ms=phase.pause_ms,
        clients=clients,
        asked=asked,
        pairs=total.pairs,
        stale=total.stale,
        on_replica=total.on_replica,
        on_primary=total.pairs - total.on_replica,
        replica_share=round(total.on_replica / total.pairs, 4) if total.pairs else 0.0,
        failed=failed,
        by_mode={
            mode: {"pairs": t.pairs, "stale": t.stale, "on_replica": t.on_replica}
            for mode, t in tallies.items()
        },
        served_by_replica=served(after) - served(before),
        fallbacks={reason: n for reason, n in sorted(fallbacks.items()) if n},
        read_p50_ms=None if p50 is None else round(p50 * 1000, 2),
        read_p99_ms=None if p99 is None else round(p99 * 1000, 2),
        seconds=round(seconds, 2),
    )
