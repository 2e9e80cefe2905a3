"""The bank through a Patroni switchover and a crash of its leader, synchronous_mode on.

Concurrent clients move money between accounts over HTTP (examples/bank, served by uvicorn
on the cluster's multi-host URL) while the cluster switches over and then loses its leader to
a crash, its standby held a second behind first (tests/bank_failover.py). With Patroni's
synchronous_mode, a commit waits for the standby, so the crash loses nothing that was
acknowledged; the figures of the same run without it, and the times, are
benchmarks/failover.py's (docs/failover.md).
"""

from __future__ import annotations

import pytest

from tests.bank_failover import Outcome, run
from tests.patroni_cluster import PatroniCluster, alone, healthy

# Seconds the standby is behind when the leader crashes: without synchronous_mode, writes
# acknowledged in that second would be lost (benchmarks/results/failover.md).
LAG = 1.0
pytestmark = [pytest.mark.patroni, pytest.mark.server]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """SQLAlchemy's asyncio extension runs on asyncio only."""
    return "asyncio"


@pytest.fixture(scope="module")
async def outcome(patroni: PatroniCluster) -> Outcome:
    """One run of the workload through a switchover and a crash, synchronous_mode on."""
    with alone():
        async with healthy(patroni, synchronous=True):
            return await run(patroni, lag=LAG)


async def test_the_clients_saw_the_switchover_and_the_crash(outcome: Outcome) -> None:
    """Both events happened under load, each with a new primary, and writes came back."""
    assert [event.name for event in outcome.events] == ["switchover", "crash"]
    assert all(event.promoted is not None for event in outcome.events)
    assert all(outcome.first_write_after_promotion(event) is not None for event in outcome.events)
    assert outcome.statuses[503] > 0, outcome.statuses  # the crash cost some requests a 503


async def test_no_transfer_is_answered_500(outcome: Outcome) -> None:
    """An outage is a 503 with Retry-After, never a 500 nor a dropped connection."""
    assert set(outcome.statuses) <= {201, 409, 503}, outcome.statuses
    assert outcome.server_errors == 0


async def test_no_acknowledged_transfer_is_lost_with_synchronous_mode(outcome: Outcome) -> None:
    """Every transfer answered 201 is in the new primary's ledger."""
    assert len(outcome.acknowledged) > 100
    assert outcome.lost == []


async def test_the_total_balance_is_unchanged(outcome: Outcome) -> None:
    """Money moved, none made or destroyed."""
    assert sum(outcome.balances.values()) == outcome.total


async def test_no_transfer_is_half_applied(outcome: Outcome) -> None:
    """Each account's balance is what the ledger's transfers make it: a transfer that
    failed left neither its debit nor its credit behind."""
    assert outcome.mismatched_accounts() == []
