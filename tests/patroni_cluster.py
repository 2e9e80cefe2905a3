"""A real two-node Patroni cluster, for the failover tests and benchmark.

``tests/patroni/cluster`` makes it: etcd, and two Patroni nodes running PostgreSQL 15 on
127.0.0.1:5440 and :5441 (``DBSCOPE_PATRONI_PORT`` moves them), with a database ``test``
and a superuser password of its own (docs/failover.md, "A cluster of your own").
:func:`ensure_cluster` finds it running or starts it (with ``synchronous_mode`` on),
:func:`release` stops it if this run started it. The tests reach the nodes by the
multi-host URL an application would use (:meth:`PatroniCluster.url`) or one node at a time
(:meth:`PatroniCluster.node_url`), and ask Patroni's REST API which node leads.

A switchover, a crash of the leader (every process of its node frozen, then ``kill -9``),
with its standby held behind for a while first if asked, and its rejoining are the
script's, run here as they would be by hand.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
from sqlalchemy.engine import URL, make_url

from tests.helpers import exclusive
from tests.services import ServiceUnavailable, ensure_started, script, stop

SCRIPT = Path(__file__).parent / "patroni" / "cluster"
PORT = int(os.environ.get("DBSCOPE_PATRONI_PORT", "5440"))
REST_PORT = int(os.environ.get("DBSCOPE_PATRONI_REST_PORT", "8018"))
HOST = "127.0.0.1"
# Measured: ~12 s for a fresh cluster (~25 s on a loaded machine); this bounds a stuck one.
START_TIMEOUT = 240.0
# A crashed leader's key expires after Patroni's ttl (20 s); its standby then promotes.
FAILOVER_TIMEOUT = 90.0
LOCK = Path(tempfile.gettempdir()) / "dbscope-patroni-tests.lock"


@dataclass(frozen=True)
class PatroniCluster:
    """The running cluster: where its nodes are, and how to reach them.

    Attributes:
        url_template: the multi-host URL of database ``test`` (``postgresql+asyncpg``),
            password included.
        started: started by this test run, which stops it at its end.
    """

    url_template: URL
    started: bool

    @property
    def ports(self) -> tuple[int, int]:
        """The two nodes' PostgreSQL ports."""
        return PORT, PORT + 1

    def url(self, driver: str = "asyncpg", *, first: int | None = None) -> str:
        """The multi-host URL through ``driver`` (``target_session_attrs=read-write``): the
        application's view of the cluster. ``first``: the port listed first (by default the
        first node's)."""
        ports = self.ports if first in (None, PORT) else (PORT + 1, PORT)
        query = {
            "host": tuple(f"{HOST}:{port}" for port in ports),
            "target_session_attrs": "read-write",
        }
        url = self.url_template.set(drivername=f"postgresql+{driver}", query=query)
        return url.render_as_string(hide_password=False)

    def node_url(self, port: int, driver: str = "asyncpg", database: str = "test") -> str:
        """One node's URL, whatever its role."""
        url = self.url_template.set(
            drivername=f"postgresql+{driver}", host=HOST, port=port, database=database, query={}
        )
        return url.render_as_string(hide_password=False)

    def roles(self) -> dict[int, str]:
        """Each node's role now, as Patroni's REST API lists the members: ``leader``,
        ``replica`` or ``sync_standby`` (a crashed leader is listed until its key expires)."""
        for rest in (REST_PORT, REST_PORT + 1):
            try:
                members = httpx.get(f"http://{HOST}:{rest}/cluster", timeout=2).json()["members"]
            except (httpx.HTTPError, ValueError, KeyError):
                continue
            return {int(member["port"]): str(member["role"]) for member in members}
        return {}

    def primary_port(self) -> int | None:
        """The port of the node that serves as primary now (Patroni's ``/primary`` check
        answers 200 on it alone), or None."""
        for port, rest in zip(self.ports, (REST_PORT, REST_PORT + 1), strict=True):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://{HOST}:{rest}/primary", timeout=1).status_code == 200:
                    return port
        return None

    def standby_port(self) -> int:
        """The port of the node that is not the primary now."""
        primary = self.primary_port()
        assert primary is not None, f"no primary in {self.roles()}"
        return PORT + 1 if primary == PORT else PORT

    async def run(self, *arguments: str) -> str:
        """Run ``tests/patroni/cluster arguments...``; its output. A failure fails the test."""
        result = await anyio.run_process([str(SCRIPT), *arguments], check=False)
        output = (result.stdout + result.stderr).decode()
        assert result.returncode == 0, f"{SCRIPT} {' '.join(arguments)}: {output}"
        return output

    async def switchover(self) -> int:
        """The replica becomes the leader, the old leader a streaming replica; the new
        primary's port."""
        await self.run("switchover")
        return await self.wait_for_primary()

    async def kill_leader(self, lag: float = 0.0) -> int:
        """Crash the leader: every process of its node frozen at once, then killed; the port
        it served. ``lag``: seconds its WAL sender is held first, so that its
        standby is that far behind (as over a slow link) when the leader dies."""
        port = self.primary_port()
        assert port is not None, f"no primary to kill in {self.roles()}"
        await self.run("kill-leader", f"{lag:g}")
        return port

    async def wait_for_primary(self, *, other_than: int | None = None) -> int:
        """Wait until a node other than ``other_than`` serves as primary; its port."""
        deadline = time.monotonic() + FAILOVER_TIMEOUT
        while time.monotonic() < deadline:
            port = await anyio.to_thread.run_sync(self.primary_port)
            if port is not None and port != other_than:
                return port
            await anyio.sleep(0.1)
        message = f"No new primary within {FAILOVER_TIMEOUT} s: {self.roles()}"
        raise TimeoutError(message)

    def _state(self) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
        """The members and the dynamic configuration, as the first node that answers
        lists them; None if none does."""
        for rest in (REST_PORT, REST_PORT + 1):
            try:
                members = httpx.get(f"http://{HOST}:{rest}/cluster", timeout=2).json()["members"]
                config = httpx.get(f"http://{HOST}:{rest}/config", timeout=2).json()
            except (httpx.HTTPError, ValueError, KeyError):
                continue
            return members, config
        return None

    def ready(self) -> bool:
        """Whether the cluster can fail over now: a leader, and a streaming replica that is
        its synchronous standby when ``synchronous_mode`` is on (Patroni promotes no other
        then)."""
        state = self._state()
        if state is None:
            return False
        members, config = state
        wanted = (
            ("sync_standby",) if config.get("synchronous_mode") else ("replica", "sync_standby")
        )
        return any(
            member["role"] in wanted and member["state"] == "streaming" for member in members
        )

    def settled(self, synchronous: bool) -> bool:
        """Whether the cluster is as :func:`healthy` leaves it: a running leader and a
        streaming replica, which is its synchronous standby exactly when ``synchronous``
        (``synchronous_mode`` on)."""
        state = self._state()
        if state is None or bool(state[1].get("synchronous_mode")) != synchronous:
            return False
        roles = {(member["role"], member["state"]) for member in state[0]}
        standby = ("sync_standby", "streaming") if synchronous else ("replica", "streaming")
        listed_as_sync = any(role == "sync_standby" for role, _ in roles)
        return (
            ("leader", "running") in roles
            and standby in roles
            and (synchronous or not listed_as_sync)
        )

    async def wait_ready(self) -> None:
        """Wait until :meth:`ready`."""
        deadline = time.monotonic() + FAILOVER_TIMEOUT
        while not await anyio.to_thread.run_sync(self.ready):
            if time.monotonic() > deadline:
                roles = self.roles()
                message = f"The cluster cannot fail over after {FAILOVER_TIMEOUT} s: {roles}"
                raise TimeoutError(message)
            await anyio.sleep(0.1)

    async def rejoin(self) -> None:
        """Start the node kill_leader() killed again, and wait until it streams."""
        await self.run("rejoin")

    async def synchronous(self, on: bool) -> None:
        """Turn Patroni's ``synchronous_mode`` on (and wait for a synchronous standby) or off."""
        await self.run("sync", "on" if on else "off")


def ensure_cluster(environ: Mapping[str, str] = os.environ) -> PatroniCluster:
    """The script's cluster, running or started now (with ``synchronous_mode``).

    Raises:
        ServiceUnavailable: the script could not start it (not root, no package mirror...).
    """
    started = ensure_started(SCRIPT, "start", "sync", timeout=START_TIMEOUT, environ=environ)
    url = script(SCRIPT, "url", timeout=START_TIMEOUT)
    if url.returncode != 0:
        raise ServiceUnavailable(f"{SCRIPT} url failed: {url.stderr.strip()}")
    return PatroniCluster(make_url(url.stdout.strip()), started=started)


def release(cluster: PatroniCluster) -> None:
    """Stop the cluster and remove its directory if this run started it."""
    if cluster.started:
        stop(SCRIPT, timeout=START_TIMEOUT)


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """The cluster is this test's alone meanwhile (among the processes of this machine's
    test runs and benchmarks): its tests switch, kill and reconfigure the one cluster."""
    with exclusive(LOCK):
        yield


@contextlib.asynccontextmanager
async def healthy(cluster: PatroniCluster, *, synchronous: bool = True) -> AsyncIterator[None]:
    """A leader and a streaming replica before the block, with ``synchronous_mode`` as
    asked; after it, a node the block killed rejoined and synchronous mode back on."""
    await _settle(cluster, synchronous)
    try:
        yield
    finally:
        await _settle(cluster, True)


async def _settle(cluster: PatroniCluster, synchronous: bool) -> None:
    """Rejoin a killed node and set ``synchronous_mode``, unless the cluster is so already
    (asked over its REST API in this process: the script's checks start interpreters)."""
    if await anyio.to_thread.run_sync(cluster.settled, synchronous):
        return
    await cluster.rejoin()
    await cluster.synchronous(synchronous)
