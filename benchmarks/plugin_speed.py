"""How fast is a test under dbscope's pytest plugin? ``python benchmarks/plugin_speed.py``.

Generates 500 tests that each insert a row, commit, and read the rows back (10 modules of
50), in a temporary directory, and runs them with pytest (pytest-asyncio, auto mode) in a
fresh process for each of these set-ups, against the same PostgreSQL database:

- ``empty``: 500 async tests without a database, the floor that pytest itself sets;
- ``idle``: 500 tests that take ``dbscope_session`` and run nothing: the plugin's own cost;
- ``plugin``: the 500 tests on the plugin's ``dbscope_session``;
- ``recreate``: the same 500 tests on the common alternative, a fixture that creates the
  engine and the tables for every test (``create_all``) and drops them after it;

``idle`` and ``plugin`` run twice: with an event loop per test (the default; each test opens
a connection) and with one loop for the whole run (``-session-loop``; the tests share one
pooled connection). ``--tables N`` puts N tables in the metadata, as an application has.

The plugin runs the tests in a database of the run's own (``<name>_test``), which it makes
when the run begins and drops when it ends. ``idle`` and ``plugin`` keep it between their runs
(``--dbscope-reuse-db``), so that their figures are the cost per test; ``plugin-fresh`` then
runs ``plugin`` without that option, making and dropping the database as a user's run does,
which shows the cost of doing so once per run and leaves no database behind.

Prints each wall time (the best of ``--repeat`` runs, with that run's CPU time, pytest's
and its workers'), the cost per test over ``empty``, and the ratios of ``recreate`` to
``plugin``. docs/testing.md records the figures.

``--workers N`` runs each set-up with pytest-xdist's ``-n N``: each worker runs its share of
the tests in a database of its own (``<name>_test_gw0``...). ``recreate`` is left out then:
its fixture makes and drops the same tables in the one database, which the workers would
share. benchmarks/results/xdist.md records the figures.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
MODULES = 10
TESTS_PER_MODULE = 50
TABLE = "bench_plugin_rows"

MODELS = f"""
from sqlalchemy import Column, Integer, MetaData, String, Table

metadata = MetaData()
rows = Table(
    "{TABLE}", metadata, Column("id", Integer, primary_key=True), Column("name", String(50))
)
"""

# More tables, as an application has: the tests never touch them, but create_all makes them.
EXTRA_TABLE = """
Table(
    "{table}_{number}",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(50)),
    Column("size", Integer),
)
"""

# The body every database test runs, whichever fixture gives its session.
BODY = """
    await session.execute(insert(rows).values(name="row {n}"))
    await session.commit()
    names = (await session.execute(select(rows.c.name))).scalars().all()
    assert names == ["row {n}"]
"""

PLUGIN_TEST = (
    """
async def test_row_{n}(dbscope_session):
    session = dbscope_session
"""
    + BODY
)

RECREATE_TEST = (
    """
async def test_row_{n}(session):
"""
    + BODY
)

# The plugin's own cost: the fixture, and a test that runs no statement of its own.
IDLE_TEST = """
async def test_row_{n}(dbscope_session):
    await asyncio.sleep(0)
"""

EMPTY_TEST = """
async def test_row_{n}():
    await asyncio.sleep(0)
"""

HEADERS = {
    "plugin": "from sqlalchemy import insert, select\nfrom models import rows\n",
    "recreate": "from sqlalchemy import insert, select\nfrom models import rows\n",
    "idle": "import asyncio\n",
    "empty": "import asyncio\n",
}

# The per-test fixture of the ``recreate`` set-up: engine, tables and session per test.
RECREATE_CONFTEST = """
import os

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from models import metadata


@pytest.fixture
async def session():
    engine = create_async_engine(os.environ["DBSCOPE_TEST_URL"])
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        yield session
    async with engine.begin() as connection:
        await connection.run_sync(metadata.drop_all)
    await engine.dispose()
"""

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = {loop}
asyncio_default_test_loop_scope = {loop}
dbscope_metadata = models:metadata
pythonpath = .
filterwarnings = error
"""


def write_project(root: Path, kind: str, loop: str, tables: int) -> Path:
    """Write one set-up's 500 tests, its pytest.ini and its conftest.py under ``root``."""
    project = root / f"{kind}-{loop}"
    project.mkdir()
    (project / "pytest.ini").write_text(INI.format(loop=loop))
    extra = "".join(EXTRA_TABLE.format(table=TABLE, number=n) for n in range(1, tables))
    (project / "models.py").write_text(MODELS + extra)
    if kind == "recreate":
        (project / "conftest.py").write_text(RECREATE_CONFTEST)
    templates = {
        "plugin": PLUGIN_TEST,
        "idle": IDLE_TEST,
        "recreate": RECREATE_TEST,
        "empty": EMPTY_TEST,
    }
    template = templates[kind]
    for module in range(MODULES):
        numbers = range(module * TESTS_PER_MODULE, (module + 1) * TESTS_PER_MODULE)
        tests = "".join(template.format(n=n) for n in numbers)
        (project / f"test_rows_{module}.py").write_text(HEADERS[kind] + tests)
    return project


def children_cpu() -> float:
    """The CPU seconds (user and system) of this process's finished children and theirs."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(project: Path, url: str, *, reuse: bool, workers: int = 0) -> tuple[float, float]:
    """Run pytest on ``project`` in a fresh process; return its wall time and the CPU time
    of pytest and its workers, in seconds.

    ``reuse``: keep the plugin's database for the next run instead of making it anew.
    ``workers``: pytest-xdist's worker processes (``-n``); 0 runs without pytest-xdist.
    """
    env = {**os.environ, "DBSCOPE_TEST_URL": url}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:anyio"]
    if reuse:
        command.append("--dbscope-reuse-db")
    if workers:
        command += ["-n", str(workers)]
    cpu = children_cpu()
    started = time.perf_counter()
    completed = subprocess.run(
        command, cwd=project, env=env, capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - started
    summary = completed.stdout.strip().splitlines()[-1:] or ["(no output)"]
    expected = MODULES * TESTS_PER_MODULE
    if completed.returncode != 0 or f"{expected} passed" not in summary[0]:
        print(completed.stdout[-3000:], completed.stderr[-3000:], sep="\n", file=sys.stderr)
        message = f"{project.name}: pytest failed: {summary[0]}"
        raise SystemExit(message)
    return elapsed, children_cpu() - cpu


def main() -> int:
    """Run every set-up ``--repeat`` times and print the best wall time of each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("DBSCOPE_BENCH_URL", DEFAULT_URL))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tables", type=int, default=1, help="tables in the metadata")
    parser.add_argument("--workers", type=int, default=0, help="pytest-xdist's -n (0: none)")
    arguments = parser.parse_args()
    workers = arguments.workers
    setups = [
        ("empty", "function"),
        ("idle", "function"),
        ("idle", "session"),
        ("plugin", "function"),
        ("plugin", "session"),
        ("recreate", "function"),
    ]
    if workers:  # its tables, made and dropped by every test, would be the workers' to share
        setups.remove(("recreate", "function"))
    count = MODULES * TESTS_PER_MODULE
    best: dict[str, tuple[float, float]] = {}
    repeats = range(arguments.repeat)
    with tempfile.TemporaryDirectory(prefix="dbscope-plugin-speed-") as directory:
        for kind, loop in setups:
            project = write_project(Path(directory), kind, loop, arguments.tables)
            name = kind if loop == "function" else f"{kind}-{loop}-loop"
            runs = (run(project, arguments.url, reuse=True, workers=workers) for _ in repeats)
            best[name] = min(runs)
        # Last, so that its final run drops the database the runs above kept.
        fresh = Path(directory) / "plugin-function"
        runs = (run(fresh, arguments.url, reuse=False, workers=workers) for _ in repeats)
        best["plugin-fresh"] = min(runs)
    where = arguments.url.split("@")[-1]
    how = f"{workers} xdist workers" if workers else "no xdist"
    print(f"{count} tests, {arguments.tables} table(s), {how}, best of {arguments.repeat}, {where}")
    print_figures(best, count)
    return 0


def print_figures(best: dict[str, tuple[float, float]], count: int) -> None:
    """Each set-up's best wall time (and that run's CPU time), and what they imply."""
    wall = {name: seconds for name, (seconds, _) in best.items()}
    for name, (seconds, cpu) in best.items():
        extra = ""
        if name != "empty":
            per_test = (seconds - wall["empty"]) / count * 1000
            extra = f"  ({per_test:.2f} ms per test over empty)"
        print(f"  {name:<22} {seconds:6.2f} s  CPU {cpu:6.2f} s{extra}")
    for plugin in ("plugin", "plugin-session-loop"):
        if "recreate" in wall:
            print(f"  recreate / {plugin}: {wall['recreate'] / wall[plugin]:.1f}x")
    once = wall["plugin-fresh"] - wall["plugin"]
    print(f"  making and dropping the run's database: {once:+.2f} s once per run")


if __name__ == "__main__":
    raise SystemExit(main())
