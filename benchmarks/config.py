"""What every server of the benchmark gets: its core, its pool and its environment."""

from __future__ import annotations

from typing import Final

from benchmarks.variants.common import bench_settings

SERVER_CORE: Final = 1
LOAD_CORE: Final = 0
POOL_SIZE: Final = 16
# Every variant gets SQLAlchemy's own default, so that none waits longer than another.
POOL_TIMEOUT: Final = 30.0


def base_env(pool_size: int = POOL_SIZE) -> dict[str, str]:
    """The settings every variant gets: the same URL, pool and timeout."""
    settings = bench_settings()
    return {
        "BENCH_DATABASE_URL": settings.url,
        "BENCH_POOL_SIZE": str(pool_size),
        "BENCH_MAX_OVERFLOW": "0",
        "BENCH_POOL_TIMEOUT": str(POOL_TIMEOUT),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
