"""The bank workload through a Patroni failover: what the clients were told, and what stayed.

The example bank (examples/bank) is served by a real uvicorn on the cluster's multi-host URL
(``target_session_attrs=read-write``). Concurrent clients send transfers, each named by the
client and answered one by one, while the cluster switches over and then loses its leader to
``kill -9``; a poller of Patroni's REST API notes when each new primary starts serving. At
the end the ledger and the balances are read on the new primary and set against the answers
(:class:`Outcome`): transfers answered 2xx and missing (acknowledged writes lost), answers of
500, balances that disagree with the ledger (a half-applied transfer), and how long the
clients got 503s around each event.

tests/test_failover_bank.py asserts on a run; benchmarks/failover.py records runs with and
without Patroni's ``synchronous_mode`` in benchmarks/results/failover.md.
"""

from __future__ import annotations

import functools
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import anyio
import httpx
from examples.bank.app import open_accounts
from sqlalchemy import text

from dbscope import Database
from tests.server import running_server

APP = "examples.bank.app:app"
ACCOUNTS = 20
BALANCE = 1_000_000
# Clients in flight at once; each waits for its answer before sending the next transfer.
CLIENTS = 8
# After a 503 a client waits this long rather than Retry-After (1 s), so that the span of
# 503s is measured to within 50 ms; the clients still send a new transfer each time.
PAUSE_AFTER_ERROR = 0.05
# Writes answered 2xx for this long mark the cluster as recovered from an event.
SETTLED = 2.0
# Bounds: a run that does not recover within these stops and fails its checks.
EVENT_TIMEOUT = 90.0
REST_POLL = 0.05


class Cluster(Protocol):
    """What the workload asks of the cluster (tests/patroni_cluster.PatroniCluster)."""

    def url(self, driver: str = "asyncpg", *, first: int | None = None) -> str:
        """The multi-host URL."""

    def primary_port(self) -> int | None:
        """The port of the node serving as primary now."""

    async def switchover(self) -> int:
        """A planned switch; the new primary's port."""

    async def kill_leader(self, lag: float = 0.0) -> int:
        """Crash the leader, its standby ``lag`` seconds behind; its port."""

    async def wait_ready(self) -> None:
        """Wait until the cluster can fail over (a synchronous standby, if that mode is on)."""


@dataclass
class Answer:
    """One transfer and what its client was told (``status`` 0: no HTTP answer)."""

    id: str
    source: int
    target: int
    amount: int
    sent: float
    answered: float
    status: int


@dataclass
class Event:
    """A switchover or a crash: when it began (a crash: when its standby was first held
    behind, if it was), when the new primary started serving, when writes had been back
    for SETTLED seconds."""

    name: str
    began: float
    promoted: float | None = None
    ended: float | None = None


@dataclass
class Outcome:
    """What one run showed.

    Attributes:
        answers: every transfer with its answer, in the order sent.
        events: the switchover and the crash.
        ledger: the transfer ids the new primary's ledger holds.
        balances: each account's balance on the new primary.
        total: the total the bank started with.
    """

    answers: list[Answer]
    events: list[Event]
    ledger: set[str]
    balances: dict[int, int]
    total: int = ACCOUNTS * BALANCE
    statuses: Counter[int] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.statuses = Counter(answer.status for answer in self.answers)

    @property
    def acknowledged(self) -> list[Answer]:
        """Transfers answered 2xx."""
        return [answer for answer in self.answers if 200 <= answer.status < 300]

    @property
    def lost(self) -> list[Answer]:
        """Transfers answered 2xx that the ledger does not hold: acknowledged writes lost."""
        return [answer for answer in self.acknowledged if answer.id not in self.ledger]

    @property
    def server_errors(self) -> int:
        """Answers of 500 and the like: anything 5xx but 503, and no answer at all."""
        return sum(n for status, n in self.statuses.items() if status == 0 or status > 503)

    @property
    def errors_applied(self) -> list[Answer]:
        """Transfers answered with an error that the ledger holds all the same: a commit
        whose answer was lost with the connection (a 503), which the client must not take
        for a refusal; a retry with the same id is refused (409), never applied twice."""
        return [a for a in self.answers if a.status >= 400 and a.id in self.ledger]

    def mismatched_accounts(self) -> list[int]:
        """Accounts whose balance is not what the ledger says: a half-applied transfer."""
        expected = dict.fromkeys(self.balances, BALANCE)
        for answer in self.answers:
            if answer.id in self.ledger:
                expected[answer.source] -= answer.amount
                expected[answer.target] += answer.amount
        return [number for number, balance in self.balances.items() if expected[number] != balance]

    def unavailable_seconds(self, event: Event) -> float:
        """From the first to the last transfer sent during ``event`` that got no 2xx."""
        failed = [
            a.sent
            for a in self.answers
            if event.began <= a.sent <= (event.ended or a.sent) and not 200 <= a.status < 300
        ]
        return max(failed) - min(failed) if failed else 0.0

    def first_write_after_promotion(self, event: Event) -> float | None:
        """Seconds from the new primary serving to the first transfer answered 2xx after it."""
        if event.promoted is None:
            return None
        done = [
            a.answered
            for a in self.acknowledged
            if a.answered >= event.promoted and a.sent >= event.began
        ]
        return min(done) - event.promoted if done else None


class Clients:
    """The concurrent clients and everything they were told."""

    def __init__(self, base_url: str, run: str) -> None:
        self.base_url = base_url
        self.run = run
        self.answers: list[Answer] = []
        self.stopped = False

    async def client(self, number: int) -> None:
        """Send transfers one after another until stopped."""
        chooser = random.Random(number)  # noqa: S311 - a workload, not a secret
        sequence = 0
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30) as http:
            while not self.stopped:
                sequence += 1
                source, target = chooser.sample(range(ACCOUNTS), 2)
                name, amount = f"{self.run}-{number}-{sequence}", chooser.randint(1, 100)
                body = {"id": name, "source": source, "target": target, "amount": amount}
                sent = time.monotonic()
                try:
                    status = (await http.post("/transfers", json=body)).status_code
                except httpx.TransportError:
                    status = 0
                answered = time.monotonic()
                answer = Answer(name, source, target, amount, sent, answered, status)
                self.answers.append(answer)
                if not 200 <= status < 300:
                    await anyio.sleep(PAUSE_AFTER_ERROR)

    def settled_since(self, moment: float) -> bool:
        """Whether transfers sent after ``moment`` have been answered 2xx for SETTLED s."""
        recent = [a for a in self.answers if a.sent >= moment]
        if not recent or not 200 <= recent[-1].status < 300:
            return False
        streak_start = recent[-1].sent
        for answer in reversed(recent):
            if not 200 <= answer.status < 300:
                break
            streak_start = answer.sent
        return recent[-1].answered - streak_start >= SETTLED


async def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + EVENT_TIMEOUT
    while time.monotonic() < deadline:
        if condition():
            return
        await anyio.sleep(0.05)
    message = f"No {what} within {EVENT_TIMEOUT} s."
    raise TimeoutError(message)


async def _promotion(cluster: Cluster, event: Event, other_than: int) -> None:
    """Note when a node other than ``other_than`` starts serving as primary."""
    while event.promoted is None:
        port = await anyio.to_thread.run_sync(cluster.primary_port)
        if port is not None and port != other_than:
            event.promoted = time.monotonic()
            return
        await anyio.sleep(REST_POLL)


async def _event(
    cluster: Cluster, clients: Clients, name: str, act: Callable[[], Awaitable[int]]
) -> Event:
    old = cluster.primary_port()
    assert old is not None, "no primary before the event"
    event = Event(name, began=time.monotonic())
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_promotion, cluster, event, old)
        await act()
        await _wait(lambda: event.promoted is not None, f"{name}: a new primary")
    assert event.promoted is not None
    promoted = event.promoted
    await _wait(lambda: clients.settled_since(promoted), f"{name}: writes again")
    event.ended = time.monotonic()
    return event


async def run(
    cluster: Cluster, driver: str = "asyncpg", *, lag: float = 0.0, warm_up: float = 2.0
) -> Outcome:
    """Transfers through a switchover, then through a crash of the leader; the outcome.

    ``lag``: seconds the standby is held behind before the crash (the leader's WAL sender stopped,
    as over a slow link), so that asynchronous replication has acknowledged writes it has not
    sent yet. The killed node is left down: the caller rejoins it
    (tests/patroni_cluster.healthy).
    """
    url = cluster.url(driver)
    async with Database(url) as db:
        await open_accounts(db, ACCOUNTS, BALANCE)
    run_id = f"r{time.time_ns()}"
    events: list[Event] = []
    with running_server(APP, {"DATABASE_URL": url}) as base_url:
        clients = Clients(base_url, run_id)
        async with anyio.create_task_group() as tasks:
            for number in range(CLIENTS):
                tasks.start_soon(clients.client, number)
            try:
                await cluster.wait_ready()
                await anyio.sleep(warm_up)
                events.append(await _event(cluster, clients, "switchover", cluster.switchover))
                # The old leader back as a standby (synchronous, in that mode): else no node
                # may take over from the next leader.
                await cluster.wait_ready()
                crash = functools.partial(cluster.kill_leader, lag)
                events.append(await _event(cluster, clients, "crash", crash))
            finally:
                clients.stopped = True
    ledger, balances = await _read_back(url)
    return Outcome(clients.answers, events, ledger, balances)


async def _read_back(url: str) -> tuple[set[str], dict[int, int]]:
    async with Database(url) as db, db.transaction(read_only=True) as session:
        ledger = set((await session.scalars(text("SELECT id FROM bank_ledger"))).all())
        rows = (await session.execute(text("SELECT id, balance FROM bank_accounts"))).all()
    return ledger, {int(number): int(balance) for number, balance in rows}
