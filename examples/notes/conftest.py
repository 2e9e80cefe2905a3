"""Fixtures for the example's tests (tests/conftest.py does not reach examples/)."""

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """SQLAlchemy's asyncio extension runs on asyncio only."""
    return "asyncio"
