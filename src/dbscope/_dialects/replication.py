"""What a server says of its place in streaming replication, as the backends read it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# The sizes of a WAL page's header (MAXALIGNed): the long one opens each segment.
PAGE_HEADER: Final = 24
SEGMENT_HEADER: Final = 40

# PostgreSQL's questions, which its backend asks (postgresql.py).
# Who a commit waits for: the setting, its level, and the standbys connected in a state
# that a commit waits for. A user without pg_monitor sees the standbys' rows with NULL
# states: the third count tells that nothing could be seen.
STANDBYS_QUERY: Final = """
SELECT current_setting('synchronous_standby_names'),
       current_setting('synchronous_commit'),
       count(*) FILTER (WHERE sync_state IN ('sync', 'quorum')),
       count(*) FILTER (WHERE sync_state IS NULL),
       count(*)
FROM pg_stat_replication
"""
# Read-your-writes (FIELD-NOTES: a position taken inside the transaction misses its own commit).
# The functions are named with their schema: a function of the same name earlier on the
# search_path must not answer instead. The page and segment sizes say where a page's header is.
WRITE_POSITION: Final = (
    "SELECT pg_catalog.pg_current_wal_insert_lsn()::text, "
    "pg_catalog.current_setting('wal_block_size')::int, "
    "pg_catalog.pg_size_bytes(pg_catalog.current_setting('wal_segment_size'))"
)
# pg_control_system() needs pg_monitor or superuser; without it the cluster goes unnamed.
REPLICATION: Final = (
    "SELECT (SELECT system_identifier::text FROM pg_catalog.pg_control_system()), "
    "pg_catalog.pg_is_in_recovery(), pg_catalog.pg_last_wal_replay_lsn()::text, "
    "CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL "
    "ELSE pg_catalog.pg_current_wal_lsn()::text END"
)
# The position goes as text: asyncpg would encode a pg_lsn parameter from an int.
REPLAYED: Final = (
    "SELECT pg_catalog.pg_is_in_recovery() "
    "AND pg_catalog.pg_last_wal_replay_lsn() >= CAST(CAST(:position AS text) AS pg_lsn)"
)


@dataclass(frozen=True)
class Replication:
    """One server's place in streaming replication.

    Attributes:
        cluster: the cluster's identity, shared by a primary and its physical replicas
            (PostgreSQL's system identifier); "" when the server does not say.
        replica: whether the server is a replica (in recovery), not a primary.
        position: a replica's replayed position, or a primary's current one, in bytes.
    """

    cluster: str
    replica: bool
    position: int | None


@dataclass(frozen=True)
class Standbys:
    """Whether a commit waits for a standby server: what the primary says of itself.

    Attributes:
        setting: the server's list of synchronous standbys (empty: commits never wait).
        commit: the level a commit waits for (PostgreSQL's ``synchronous_commit``).
        in_sync: standbys connected that a commit waits for now; None when the user may not
            see them.
        connected: standbys connected, whether a commit waits for them or not.
    """

    setting: str
    commit: str
    in_sync: int | None
    connected: int = 0


def lsn_bytes(text: str) -> int:
    """A log sequence number (``16/B374D848``) as a position in bytes."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def record_end(position: int, page: int, segment: int) -> int:
    """An insert position as the end of the last record written before it.

    Where the last record ended exactly at a page's end, the insert position is past the next
    page's header, where the next record will start; a replica that has replayed everything
    reports the page's end, short of it, until some other record is written (measured: about
    1 commit in 1000, whose reads then waited for nothing and went to the primary).
    """
    if position % segment == SEGMENT_HEADER:
        return position - SEGMENT_HEADER
    if position % page == PAGE_HEADER:
        return position - PAGE_HEADER
    return position


def lsn_text(position: int) -> str:
    """A position in bytes as a log sequence number."""
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"
