"""Reliability tests: retries, background work, streams and cancellation under real load.

Run them on their own with ``pytest -s tests/reliability`` to see the figures they print.
"""
