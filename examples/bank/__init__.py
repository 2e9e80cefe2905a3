"""The bank example: money moved between accounts, one unit of work per transfer
(docs/failover.md runs it through a Patroni failover)."""
