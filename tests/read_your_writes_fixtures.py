"""The fixtures of the read-your-writes tests (tests/test_read_your_writes*.py), which
register this module as a plugin (``pytest_plugins``) and never import it:

- ``notes``: the primary's and the replica's URL of these tests' database
  (tests/read_your_writes_pair.py), with an empty ``ryw_notes`` replayed, through each
  PostgreSQL driver in turn (conftest's ``primary_url`` and ``replica_url``);
- ``notes_asyncpg``: the same through asyncpg alone.
"""

from collections.abc import AsyncIterator

import pytest

from tests.read_your_writes_pair import Pair, notes_table
from tests.replica_cluster import ReplicaPair


@pytest.fixture
async def notes(primary_url: str, replica_url: str) -> AsyncIterator[Pair]:
    """The notes table on the pair, through each PostgreSQL driver in turn."""
    async with notes_table(primary_url, replica_url) as pair:
        yield pair


@pytest.fixture
async def notes_asyncpg(replica_pair: ReplicaPair) -> AsyncIterator[Pair]:
    """The notes table on the pair, through asyncpg (where the driver does not matter)."""
    primary, replica = (replica_pair.url(role, "asyncpg") for role in ("primary", "replica"))
    async with notes_table(primary, replica) as pair:
        yield pair
