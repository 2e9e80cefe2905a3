"""Every ```python block of README.md and docs/ is run by a test, or says why not.

A test takes a block through tests/documented.py (``block_containing``, or an index into
``python_blocks``); each block taken is recorded here, in the process that runs the test. A
block that no test can run carries a marker with its reason on the line before its fence::

    <!-- not run: needs a Celery broker and worker processes -->

At the end of a whole run of the suite (``make test``: every test collected, each one run and
passed, none skipped), the blocks neither taken nor marked fail the run, each named by its
file and first line. Under pytest-xdist each worker hands its record to the controller, which
checks the union; tests/run_suite.py's two runs each write theirs to the file
``$DBSCOPE_DOCS_BLOCKS_RECORD`` names, and it checks the union. A partial run (a file, ``-k``,
a failure) checks nothing: the blocks that the tests it left out take would all look unrun.

Registered as a plugin by tests/conftest.py (``pytest_plugins``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parent.parent
FENCE = re.compile(r"```python\n(.*?)```", flags=re.DOTALL)
NOT_RUN = re.compile(r"<!-- not run: (?P<reason>\S.*?) -->")
# What a marker starts with, to find one written wrong (no reason, or a misspelling).
NOT_RUN_START = "<!-- not run"
WORKER_KEY = "dbscope_docs_blocks_taken"
# The file a part of tests/run_suite.py writes its record to, once every test of it passed.
RECORD = "DBSCOPE_DOCS_BLOCKS_RECORD"
ADVICE = (
    "Run each from a test through tests/documented.py (block_containing, python_blocks), "
    "or put '<!-- not run: <reason> -->' on the line before its fence."
)

TAKEN: set[tuple[str, str]] = set()
"""(document, block) for each block a test of this process has taken."""


@dataclass(frozen=True)
class Block:
    """One ```python block of a Markdown file."""

    document: str
    number: int
    """Its place among the file's python blocks, from 1."""
    code: str
    not_run: str | None
    """The reason its marker gives, or None without a marker."""

    @property
    def first_line(self) -> str:
        """Its first line that is not blank."""
        return next((line.strip() for line in self.code.splitlines() if line.strip()), "")

    def __str__(self) -> str:
        return f"{self.document}, python block {self.number}: {self.first_line}"


def documents(root: Path = ROOT) -> list[str]:
    """README.md and every Markdown file under docs/, as paths from ``root``."""
    guides = sorted(path.relative_to(root).as_posix() for path in (root / "docs").rglob("*.md"))
    return ["README.md", *guides]


def python_blocks_of(document: str, root: Path = ROOT) -> list[Block]:
    """The ```python blocks of ``document``, each with its not-run marker if it has one."""
    source = (root / document).read_text()
    found = []
    for number, match in enumerate(FENCE.finditer(source), start=1):
        line_before = source[: match.start()].rstrip(" ").removesuffix("\n").rsplit("\n", 1)[-1]
        marker = NOT_RUN.fullmatch(line_before.strip())
        reason = marker.group("reason") if marker else None
        found.append(Block(document, number, match.group(1), reason))
    return found


def take(document: str, taken: Iterable[str]) -> None:
    """Record that a test took these blocks of ``document``."""
    TAKEN.update((document, code) for code in taken)


def unrun(taken: Collection[tuple[str, str]], root: Path = ROOT) -> list[Block]:
    """The blocks of every document that are neither in ``taken`` nor marked as not run."""
    return [
        block
        for document in documents(root)
        for block in python_blocks_of(document, root)
        if block.not_run is None and (document, block.code) not in taken
    ]


# -- the check at the end of a whole run -----------------------------------------------------


@dataclass
class _Run:
    taken: set[tuple[str, str]]
    unrun: list[Block] | None = None


_RUN = _Run(TAKEN)


def _whole_and_green(session: pytest.Session, *, part: bool = False) -> bool:
    """Whether every test of the suite was collected, run and passed, none skipped; with
    ``part``, every test of the part ``-m`` selected (tests/run_suite.py)."""
    config = session.config
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or config.args_source is not pytest.Config.ArgsSource.TESTPATHS:
        return False
    if config.option.keyword or config.option.collectonly or (config.option.markexpr and not part):
        return False
    stats: dict[str, list[Any]] = reporter.stats
    passed = [report for report in stats.get("passed", []) if report.when == "call"]
    left_out = (
        ("failed", "error", "skipped") if part else ("failed", "error", "skipped", "deselected")
    )
    return (
        session.exitstatus == pytest.ExitCode.OK
        and not any(stats.get(kind) for kind in left_out)
        and len(passed) == session.testscollected > 0
    )


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """Under pytest-xdist, in the controller: add what a worker's tests took."""
    output = getattr(node, "workeroutput", {})
    _RUN.taken.update((document, code) for document, code in output.get(WORKER_KEY, []))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Hand the record to the controller (in a worker), or check it (otherwise)."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput[WORKER_KEY] = [list(pair) for pair in sorted(_RUN.taken)]
        return
    record = os.environ.get(RECORD)
    if record is not None:
        if _whole_and_green(session, part=True):
            Path(record).write_text(json.dumps(sorted(_RUN.taken)))
        return
    if not _whole_and_green(session):
        return
    _RUN.unrun = unrun(_RUN.taken, session.config.rootpath)
    if _RUN.unrun:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Name each python block of the docs that no test ran and no marker excuses."""
    if not _RUN.unrun:
        return
    terminalreporter.section("python blocks of the docs that no test ran", red=True)
    for block in _RUN.unrun:
        terminalreporter.line(str(block))
    terminalreporter.line(ADVICE)


def unrun_in_parts(records: Iterable[Path], root: Path = ROOT) -> list[Block] | None:
    """The blocks no part of tests/run_suite.py took, from each part's record; None when a
    part wrote none (it was not whole and green, so nothing can be told)."""
    taken: set[tuple[str, str]] = set()
    for record in records:
        if not record.exists():
            return None
        taken.update((document, code) for document, code in json.loads(record.read_text()))
    return unrun(taken, root)
