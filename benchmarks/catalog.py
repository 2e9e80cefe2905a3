"""The variants and the loads: what runs, against what, and what each variant needs."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class Variant:
    """One database layer under test.

    Attributes:
        name: the module under ``benchmarks/variants`` and the key in the results.
        label: how tables and the chart name it.
        requires: importable modules it needs beyond the project's dependencies, with the
            distribution that installs each.
    """

    name: str
    label: str
    requires: tuple[tuple[str, str], ...] = ()

    def missing(self) -> str | None:
        """Why the variant cannot run here (the install command), or None if it can."""
        absent = [
            dist for module, dist in self.requires if importlib.util.find_spec(module) is None
        ]
        return f"not installed: pip install {' '.join(absent)}" if absent else None


BASELINE: Final = "blog"
VARIANTS: Final = (
    Variant("raw_asyncpg", "raw asyncpg pool"),
    Variant("sa_core", "SQLAlchemy Core"),
    Variant(BASELINE, "blog pattern (ORM)"),
    Variant("dbscope_session", "dbscope Session"),
    Variant("dbscope_fast", "dbscope db.lease() (asyncpg)"),
    Variant(
        "dbscope_metrics",
        "dbscope Session, metrics on",
        requires=(("opentelemetry.sdk", "opentelemetry-sdk"),),
    ),
    Variant("dbscope_tags", "dbscope Session, SQL comments on"),
    Variant(
        "with_advanced_alchemy",
        "advanced-alchemy",
        requires=(("advanced_alchemy", "advanced-alchemy"),),
    ),
    Variant("with_fastapi_sqla", "fastapi-sqla", requires=(("fastapi_sqla", "fastapi-sqla"),)),
    Variant(
        "with_fastapi_async_sqlalchemy",
        "fastapi-async-sqlalchemy",
        requires=(("fastapi_async_sqlalchemy", "fastapi-async-sqlalchemy"),),
    ),
)
BY_NAME: Final = {variant.name: variant for variant in VARIANTS}
# The variants that need nothing beyond the project's own dependencies: the smoke test's.
PROJECT_ONLY: Final = tuple(v.name for v in VARIANTS if not v.requires)


@dataclass(frozen=True)
class Load:
    """One endpoint at one concurrency."""

    endpoint: str
    path: str
    connections: int

    @property
    def key(self) -> str:
        """``endpoint@connections``, e.g. ``db@256``."""
        return f"{self.endpoint}@{self.connections}"


LOADS: Final = (
    Load("db", "/db", 64),
    Load("db", "/db", 256),
    Load("queries", "/queries?q=20", 64),
    Load("updates", "/updates?q=5", 64),
    Load("nodb", "/nodb", 64),
    # No database: what 256 connections cost the server and the load generator alone, the
    # floor under /db's latency at 256 (its tail is this one's, not the pool's).
    Load("nodb", "/nodb", 256),
)
# The four endpoints every variant must answer with 200 (the smoke mode checks them).
ENDPOINTS: Final = ("/db", "/queries?q=20", "/updates?q=5", "/nodb")
