"""What ran where: the machine, the versions and the commit, written beside every result."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

from benchmarks import data, servers
from benchmarks.variants.common import bench_settings

ROOT: Final = servers.ROOT
DISTRIBUTIONS: Final = (
    "fastapi", "starlette", "pydantic", "sqlalchemy", "asyncpg", "greenlet", "uvicorn",
    "uvloop", "httptools", "dbscope", "advanced-alchemy", "fastapi-sqla",
    "fastapi-async-sqlalchemy", "matplotlib", "pyinstrument",
)  # fmt: skip


def describe_environment() -> dict[str, Any]:
    """The machine, the versions and the commit, written beside every result."""
    versions: dict[str, str | None] = {}
    for name in DISTRIBUTIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    versions["postgresql"] = asyncio.run(data.server_version(bench_settings().url))
    versions["wrk"] = _first_line(["wrk", "--version"])
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    dbscope_path = _first_line(
        [sys.executable, "-c", "import dbscope; print(dbscope.__file__)"], env=os.environ
    )
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "load_average": os.getloadavg(),
        "versions": versions,
        "commit": _first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
        "src_modified": bool(
            _first_line(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"])
        ),
        "dbscope_imported_from": dbscope_path,
    }


def _first_line(command: list[str], env: Any = None) -> str | None:
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=30, check=False, env=env
        )
    except (OSError, subprocess.SubprocessError):
        return None
    text = (completed.stdout or completed.stderr).strip()
    return text.splitlines()[0] if text else None
