"""The docs site (mkdocs.yml): it builds strict and offline, and its API reference covers
every public name."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PUBLIC_MODULES = (
    "dbscope",
    "dbscope.fastapi",
    "dbscope.testing",
    "dbscope.otel",
    "dbscope.alembic",
)
# A page's own resources, not links a reader may follow: stylesheets, scripts, images, fonts.
RESOURCE = re.compile(r"<(?:link|script|img)\b[^>]*\b(?:href|src)=\"(https?:)?//", re.IGNORECASE)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site as `make docs` builds it, in a folder of the test's own."""
    site_dir = tmp_path_factory.mktemp("site")
    build = build_site(ROOT, site_dir)
    assert build.returncode == 0, build.stderr
    return site_dir


def build_site(project: Path, site_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run `mkdocs build` on ``project``'s mkdocs.yml into ``site_dir``."""
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=project,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )


def reference_page(site: Path, module: str) -> str:
    """The HTML of the reference page of a public module (docs/reference/)."""
    page = "dbscope" if module == "dbscope" else module.removeprefix("dbscope.")
    return (site / "reference" / page / "index.html").read_text()


def public_names(module: str) -> list[str]:
    """The module's ``__all__``, and the public methods and attributes of its classes (those
    they inherit from dbscope's private bases too)."""
    imported = importlib.import_module(module)
    names = [f"{module}.{name}" for name in imported.__all__]
    for name in imported.__all__:
        value = getattr(imported, name)
        if inspect.isclass(value) and not issubclass(value, BaseException):
            names += [
                f"{module}.{name}.{member}"
                for base in value.__mro__
                if base.__module__.startswith("dbscope")
                for member, attribute in vars(base).items()
                if not member.startswith("_") and own(attribute)
            ]
    return names


def own(attribute: object) -> bool:
    """Whether a class attribute is dbscope's own, not pydantic's (``model_config``, ...)."""
    function = getattr(attribute, "fget", None) or getattr(attribute, "__func__", attribute)
    if callable(function):
        return getattr(function, "__module__", "").startswith("dbscope")
    return not isinstance(attribute, dict)


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_the_reference_has_an_entry_for_every_public_name(site: Path, module: str) -> None:
    """Each name of a public module's __all__, and its classes' members, has its heading."""
    page = reference_page(site, module)
    missing = [name for name in public_names(module) if f'id="{name}"' not in page]
    assert public_names(module)
    assert missing == []


def test_no_page_of_the_site_loads_anything_from_the_network(site: Path) -> None:
    """No page asks for a stylesheet, script, image or font from another host."""
    pages = sorted(site.rglob("*.html"))
    loading = [str(page.relative_to(site)) for page in pages if RESOURCE.search(page.read_text())]
    assert len(pages) > len(PUBLIC_MODULES)
    assert loading == []


# Each mistake with what the build's warning about it says.
BROKEN_LINKS = (
    ("[the replicas guide](replica.md)", "contains a link 'replica.md'"),
    ("[the pool](configuration.md#the-pol)", "'#the-pol'"),
)


def test_a_broken_relative_link_or_anchor_fails_the_build(tmp_path: Path) -> None:
    """A link to a page or a heading that is not there stops the strict build, naming it.

    One build for both mistakes: each must be a WARNING line of its own, and --strict fails a
    build on any warning.
    """
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    (tmp_path / "src").symlink_to(ROOT / "src")
    guide = tmp_path / "docs" / "scripts.md"
    guide.write_text(guide.read_text() + "".join(f"\nSee {link}.\n" for link, _ in BROKEN_LINKS))
    build = build_site(tmp_path, tmp_path / "site")
    warnings = [line for line in build.stderr.splitlines() if line.startswith("WARNING")]
    assert build.returncode != 0
    for _, warning in BROKEN_LINKS:
        assert any(warning in line for line in warnings), build.stderr
