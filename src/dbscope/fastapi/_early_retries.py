"""Clients that come back before their ``Retry-After``: their 503 held until it passed.

A request refused because the pool's wait line is full (``pool_max_waiters``) answers 503 at
once and asks its client to come back after ``Retry-After`` seconds. Clients that retry at
once instead (scripts, a proxy's retries, an SDK without back-off) would be refused again and
again, and on a server's one core each refusal takes the time the holders of connections need
for their own steps: measured, 17,862 refusals in 10 s and 19% goodput (docs/benchmarks.md).
So the request of a client that asks again before its ``Retry-After`` has passed is held, a
sleeping task, until it has, and then answered 503 without asking the pool; the client's next
request runs as any other. This is server-side throttling of clients that keep retrying (the
load-shedding chapter of Google's SRE book): a refusal costs such a client its wait, and the
server one refusal per ``Retry-After``, whatever the client does. The requests the pool does
serve wait only in its line, so the successes keep their latency.

A client is its connection (ASGI ``scope["client"]``: address and port), not its address: the
clients of one machine, or of one NAT, do not hold each other. Behind a reverse proxy, the
connection is the proxy's, and a hold delays whoever's request comes next on it.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Hashable, MutableMapping
from typing import Any, Final

# Clients remembered at most: a refusal adds one, the oldest is forgotten first. A hold lasts
# two seconds at most, so this many clients refused within two seconds is far beyond need.
MAX_CLIENTS: Final = 10_000


class EarlyRetries:
    """When each recently refused client may come back; see the module's docstring.

    Args:
        count_held: called for each request held (the Database counts them in its stats).
        max_clients: refused clients remembered at most.
    """

    def __init__(self, count_held: Callable[[], None], max_clients: int = MAX_CLIENTS) -> None:
        self.max_clients = max_clients
        self._count_held = count_held
        self._until: collections.OrderedDict[Hashable, float] = collections.OrderedDict()

    def refused(self, scope: MutableMapping[str, Any], retry_after: float) -> None:
        """The request of ``scope`` was refused and told to come back in ``retry_after`` s."""
        client = _client(scope)
        if client is None:
            return
        self._until[client] = asyncio.get_running_loop().time() + retry_after
        self._until.move_to_end(client)
        while len(self._until) > self.max_clients:
            self._until.popitem(last=False)

    async def hold(self, scope: MutableMapping[str, Any]) -> bool:
        """Whether the client of ``scope`` came back early: if so, return once its
        ``Retry-After`` has passed (the request is then to be answered 503 unrun); else at
        once. Either way the refusal is forgotten, so its next request runs."""
        if not self._until:  # no refusals of late: one test per request
            return False
        client = _client(scope)
        until = None if client is None else self._until.pop(client, None)
        if until is None:
            return False
        delay = until - asyncio.get_running_loop().time()
        if delay <= 0:
            return False
        self._count_held()
        await asyncio.sleep(delay)
        return True


def _client(scope: MutableMapping[str, Any]) -> Hashable | None:
    client = scope.get("client")
    return None if client is None else tuple(client)
