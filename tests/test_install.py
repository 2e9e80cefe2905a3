"""What ``pip install dbscope`` gives: a version, and an import that needs only what it declares.

The venv the tests run in holds every extra and dev tool, so an undeclared import would pass
every other test here; these compare what ``import dbscope`` loads with what pyproject.toml
declares. ``.ci/bare-install`` proves the same in a fresh venv, in CI.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import dbscope

PYPROJECT = Path(__file__).parent.parent / "pyproject.toml"


def project_table() -> dict[str, Any]:
    """The [project] table of pyproject.toml."""
    with PYPROJECT.open("rb") as file:
        table: dict[str, Any] = tomllib.load(file)["project"]
    return table


def bare_install_distributions() -> set[str]:
    """The distributions a ``pip install dbscope`` without extras brings, transitively."""
    pending = [Requirement(line) for line in project_table()["dependencies"]]
    found: set[str] = set()
    seen: set[tuple[str, str]] = set()
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        found.add(name)
        for extra in ("", *requirement.extras):
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            for line in importlib.metadata.requires(name) or []:
                dependency = Requirement(line)
                if dependency.marker is None or dependency.marker.evaluate({"extra": extra}):
                    pending.append(dependency)
    return found


def distributions_imported_by(code: str) -> set[str]:
    """The distributions whose modules ``code``, run in a fresh interpreter, imports."""
    script = (
        "import json, sys\nbefore = set(sys.modules)\n"
        f"{code}\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    modules: list[str] = json.loads(completed.stdout.splitlines()[-1])
    owners = importlib.metadata.packages_distributions()
    top_levels = {module.partition(".")[0] for module in modules}
    return {canonicalize_name(dist) for top in top_levels for dist in owners.get(top, [])}


def test_version_is_the_one_in_pyproject() -> None:
    """dbscope.__version__ is the installed distribution's version, the one pyproject.toml sets."""
    assert dbscope.__version__ == importlib.metadata.version("dbscope")
    assert dbscope.__version__ == project_table()["version"]


def test_import_dbscope_needs_only_declared_dependencies() -> None:
    """Every package `import dbscope` loads comes with `pip install dbscope`, no extra needed."""
    undeclared = distributions_imported_by("import dbscope") - bare_install_distributions()
    assert undeclared - {"dbscope"} == set(), "add them to [project] dependencies"
