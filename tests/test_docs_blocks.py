"""Every python block of the docs is run by a test or says why not (tests/docs_blocks.py):
the check at the end of a whole run, tried on small projects, and the markers of our docs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.docs_blocks import (
    NOT_RUN,
    NOT_RUN_START,
    RECORD,
    ROOT,
    documents,
    python_blocks_of,
    unrun_in_parts,
)

README = """\
# project

```python
import json
```

```python
import os
```
"""
GUIDE = """\
# guide

<!-- not run: needs a broker -->
```python
from celery import Celery
```

```python
import sys
```
"""
# A test that takes, through the record tests/documented.py keeps, the blocks it is given.
TAKING_TEST = """\
from pathlib import Path

from tests import docs_blocks

ROOT = Path(__file__).parent


def test_takes():
    for document, number in {taken!r}:
        block = docs_blocks.python_blocks_of(document, ROOT)[number - 1]
        docs_blocks.take(document, [block.code])
"""


def project(pytester: pytest.Pytester, *taken_by_test: list[tuple[str, int]]) -> None:
    """A project with README.md and docs/guide.md, and one test taking each list of blocks."""
    pytester.makefile(".md", README=README)
    (pytester.path / "docs").mkdir(exist_ok=True)
    (pytester.path / "docs" / "guide.md").write_text(GUIDE)
    pytester.makeini("[pytest]\ntestpaths = .\n")
    for number, taken in enumerate(taken_by_test):
        pytester.makepyfile(**{f"test_{number}": TAKING_TEST.format(taken=taken)})


@pytest.fixture(autouse=True)
def importable_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """The projects' pytest imports tests/docs_blocks.py from this repository, and writes no
    record where tests/run_suite.py told this run to write its own."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv(RECORD, raising=False)


UNUSED_PLUGINS = ("hypothesispytest", "schemathesis", "dbscope", "anyio", "asyncio")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """pytest in a subprocess with tests/docs_blocks.py as a plugin.

    Not in this process: the plugin's record of the blocks taken is this run's own. Without
    the installed plugins that no project here uses: Hypothesis' and Schemathesis' cost each
    process (pytest-xdist's workers too) about 1.3 s of CPU to load, dbscope's (which imports
    SQLAlchemy) about 1 s, the async plugins a little.
    """
    unused = [option for name in UNUSED_PLUGINS for option in ("-p", f"no:{name}")]
    plugins = ("-p", "tests.docs_blocks", "-p", "no:cacheprovider", *unused)
    return pytester.runpytest_subprocess(*plugins, *args)


ALL_UNMARKED = [("README.md", 1), ("README.md", 2), ("docs/guide.md", 2)]


def test_a_whole_run_fails_naming_each_block_no_test_took(pytester: pytest.Pytester) -> None:
    """Blocks neither taken nor marked fail a green whole run, each by file and first line."""
    project(pytester, [("README.md", 1)])
    result = run(pytester)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1)
    named = [line for line in result.outlines if ", python block " in line]
    assert named == [
        "README.md, python block 2: import os",
        "docs/guide.md, python block 2: import sys",
    ]


def test_a_whole_run_passes_when_every_unmarked_block_is_taken(pytester: pytest.Pytester) -> None:
    """The marked block needs no test; with the other three taken, the run passes."""
    project(pytester, ALL_UNMARKED)
    result = run(pytester)
    assert result.ret == pytest.ExitCode.OK
    assert "python blocks of the docs that no test ran" not in result.stdout.str()


def test_a_run_of_one_file_checks_nothing(pytester: pytest.Pytester) -> None:
    """A partial run leaves the tests that take the other blocks out: it is not judged."""
    project(pytester, [("README.md", 1)], [("README.md", 2), ("docs/guide.md", 2)])
    result = run(pytester, "test_0.py")
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=1)


def test_parallel_workers_records_are_checked_together(pytester: pytest.Pytester) -> None:
    """Under pytest-xdist the blocks taken on each worker add up in the controller."""
    project(pytester, [("README.md", 1)], [("README.md", 2)], [("docs/guide.md", 2)])
    passing = run(pytester, "-n", "2")
    project(pytester, [("README.md", 1)], [("README.md", 2)], [])
    failing = run(pytester, "-n", "2")
    assert passing.ret == pytest.ExitCode.OK
    passing.assert_outcomes(passed=3)
    assert failing.ret == pytest.ExitCode.TESTS_FAILED
    assert "docs/guide.md, python block 2: import sys" in failing.outlines


def test_the_parts_of_a_split_run_are_checked_together(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tests/run_suite.py's two runs (``-m services`` and ``-m "not services"``) each write
    what they took once all of theirs passed; the union is checked, and a part that failed
    wrote nothing to judge."""
    project(pytester, [("README.md", 1)], [("README.md", 2)])
    marked = pytester.path / "test_1.py"
    marked.write_text("import pytest\n\npytestmark = pytest.mark.services\n" + marked.read_text())

    def part(name: str, selection: str) -> Path:
        monkeypatch.setenv(RECORD, str(pytester.path / name))
        assert run(pytester, "-m", selection).ret == pytest.ExitCode.OK
        return pytester.path / name

    records = [part("one", "services"), part("other", "not services")]
    unrun = unrun_in_parts(records, pytester.path)
    assert [str(block) for block in unrun or ()] == ["docs/guide.md, python block 2: import sys"]
    records[1].unlink()
    assert unrun_in_parts(records, pytester.path) is None


def test_every_not_run_marker_of_the_docs_gives_its_reason() -> None:
    """Each '<!-- not run' in README.md and docs/ is a whole marker with a reason."""
    markers = [
        (document, line.strip())
        for document in documents()
        for line in (ROOT / document).read_text().splitlines()
        if NOT_RUN_START in line
    ]
    assert [marker for marker in markers if not NOT_RUN.fullmatch(marker[1])] == []


def test_a_marker_excuses_only_the_block_right_below_it(tmp_path: Path) -> None:
    """The marker must be the line just before the fence: apart from it, it excuses nothing."""
    (tmp_path / "README.md").write_text(
        "<!-- not run: needs a broker -->\n```python\nimport a\n```\n\n"
        "<!-- not run: needs a broker -->\n\n```python\nimport b\n```\n"
        "```python\nimport c\n```\n"
    )
    found = [(block.first_line, block.not_run) for block in python_blocks_of("README.md", tmp_path)]
    assert found == [("import a", "needs a broker"), ("import b", None), ("import c", None)]
