"""The pytest plugin's settings, its messages and its header line.

Each test writes a project (tests/plugin_projects.py) and runs pytest on it, most of them in
the same process and on SQLite: a missing or wrong setting fails naming it and the fix, the
URL comes from the option, the variable or the ini file, and the header names the database
without its password.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .plugin_projects import (
    ISOLATION_TESTS,
    PLAIN_INI,
    ini,
    run,
    run_plain_project,
    settings_ini,
    write_project,
)


def test_a_missing_url_fails_with_instructions(pytester: pytest.Pytester) -> None:
    """Without a URL, the error names the option, the variable and the setting; no KeyError."""
    write_project(pytester, "pytest-asyncio", ISOLATION_TESTS)

    result = run(pytester, "pytest-asyncio", None, "-k", "test_one", in_process=True)

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*--dbscope-url=URL*DBSCOPE_TEST_URL*dbscope_url*conftest.py*"])
    result.stdout.no_fnmatch_line("*KeyError*")


def test_the_option_wins_over_the_variable_and_the_variable_over_the_ini(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--dbscope-url, then DBSCOPE_TEST_URL, then dbscope_url: the first one set is used."""
    pytester.makepyfile(
        test_url="""
        import os


        def test_url(dbscope_url):
            assert dbscope_url == os.environ["EXPECTED_URL"]
        """
    )
    cases = [
        (["dbscope_url = sqlite:///ini.db"], None, (), "sqlite:///ini.db"),
        (["dbscope_url = sqlite:///ini.db"], "sqlite:///env.db", (), "sqlite:///env.db"),
        (
            ["dbscope_url = sqlite:///ini.db"],
            "sqlite:///env.db",
            ("--dbscope-url=sqlite:///option.db",),
            "sqlite:///option.db",
        ),
    ]
    for lines, env_url, args, expected in cases:
        pytester.makefile(".ini", pytest=ini("pytest-asyncio", *lines))
        monkeypatch.setenv("EXPECTED_URL", expected)
        run(pytester, "pytest-asyncio", env_url, *args, in_process=True).assert_outcomes(passed=1)


def test_the_client_needs_the_apps_database(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """dbscope_app without dbscope_database fails: the app's sessions would not join."""
    settings = settings_ini("dbscope_app = plugin_app:app")
    write_project(pytester, "pytest-asyncio", ISOLATION_TESTS, settings=settings)

    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    result = run(pytester, "pytest-asyncio", url, "-k", "test_rows_cross", in_process=True)

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*dbscope_database = 'myapp.db:db'*"])


def test_dbscope_app_may_name_a_function_that_returns_the_app(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """docs/testing.md: ``dbscope_app`` names the app, or a function without arguments (a
    default is no argument) that returns it; the client then talks to what it returned."""
    factory = "import plugin_app\n\n\ndef make_app(title='notes'):\n    return plugin_app.app\n"
    pytester.makepyfile(app_factory=factory)
    settings = settings_ini(
        "dbscope_app = app_factory:make_app",
        "dbscope_database = plugin_app:db",
        "dbscope_metadata = plugin_app:Base.metadata",
    )
    write_project(pytester, "pytest-asyncio", ISOLATION_TESTS, settings=settings)

    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    result = run(pytester, "pytest-asyncio", url, "-k", "test_rows_cross", in_process=True)

    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("setting", "test", "message"),
    [
        (
            "dbscope_database = plugin_app:db",
            "test_rows_cross",
            "*dbscope_client needs your app: set dbscope_app*",
        ),
        (
            "dbscope_app = plugin_app:application",
            "test_rows_cross",
            "*dbscope_app = 'plugin_app:application': plugin_app has no attribute*",
        ),
        (
            "dbscope_app = no_such_package.main:app",
            "test_rows_cross",
            "*there is no module 'no_such_package.main' on sys.path*pythonpath*",
        ),
        (
            # A package without the module: only the plugin's message, no import error above.
            "dbscope_app = acme_hooks.nomain:app",
            "test_rows_cross",
            "*there is no module 'acme_hooks.nomain' on sys.path*",
        ),
        (
            # A module failing to import a package whose name begins its own (acme for
            # acme_hooks.main) shows that error; it is not reported as missing itself.
            "dbscope_app = acme_hooks.main:app",
            "test_rows_cross",
            "*No module named 'acme'*",
        ),
        (
            "dbscope_metadata = plugin_app:app",
            "test_one",
            "*dbscope_metadata = 'plugin_app:app' is a FastAPI, not a MetaData*",
        ),
        (  # neither an app nor a function making one: each test met a TypeError
            "dbscope_app = plugin_app:CREATE_ALL_RUNS",
            "test_rows_cross",
            "*dbscope_app = 'plugin_app:CREATE_ALL_RUNS' is a list, not a ASGI app*",
        ),
    ],
)
def test_a_wrong_or_missing_setting_fails_naming_it(
    pytester: pytest.Pytester, tmp_path: Path, setting: str, test: str, message: str
) -> None:
    """A missing app, or a name that leads nowhere, fails with the setting and its value."""
    settings = settings_ini(setting)
    write_project(pytester, "pytest-asyncio", ISOLATION_TESTS, settings=settings)
    pytester.makepyfile(**{"acme_hooks/__init__": "", "acme_hooks/main": "import acme\n"})

    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    result = run(pytester, "pytest-asyncio", url, "-k", test, in_process=True)

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([message])
    result.stdout.no_fnmatch_line("*Traceback*")
    result.stdout.no_fnmatch_line("*During handling of the above exception*")


def test_a_yes_or_no_setting_that_is_neither_stops_the_run_naming_it(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """pytest's own said "invalid truth value", naming no setting; then each test failed in
    its fixtures with a long traceback. The run now stops at its start, naming it."""
    settings = settings_ini("dbscope_reuse_db = maybe\ndbscope_metadata = plugin_app:Base.metadata")
    write_project(pytester, "pytest-asyncio", ISOLATION_TESTS, settings=settings)

    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    result = run(pytester, "pytest-asyncio", url, in_process=True)

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*dbscope_reuse_db = ... in the ini settings is no yes or no*"])


def test_the_report_header_names_the_database_without_its_password(
    pytester: pytest.Pytester,
) -> None:
    """The header line shows the test database's URL with the password masked."""
    result = run_plain_project(pytester, "postgresql+asyncpg://app:s3cret@db.internal/test")

    result.stdout.fnmatch_lines(["dbscope: postgresql+asyncpg://app:***@db.internal/test*"])
    assert "s3cret" not in result.stdout.str()


def test_the_report_header_hides_a_password_given_in_the_query(pytester: pytest.Pytester) -> None:
    """A password passed as ?password=... is not in the header either."""
    url = "postgresql+asyncpg://app@db.internal/test?password=S3cret"
    result = run_plain_project(pytester, url)

    result.stdout.fnmatch_lines(["dbscope: postgresql+asyncpg://app:***@db.internal/test *"])
    assert "S3cret" not in result.stdout.str()


def test_a_project_without_settings_is_untouched(pytester: pytest.Pytester) -> None:
    """Installed but unused, the plugin adds no header line and changes no outcome."""
    result = run_plain_project(pytester, None)

    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("dbscope:*")


def test_an_unknown_dialect_in_dbscope_test_url_is_a_usage_error_naming_it(
    pytester: pytest.Pytester,
) -> None:
    """DBSCOPE_TEST_URL=foo://x: pytest stops with a usage error naming the variable and the
    reason, before any test; no INTERNALERROR."""
    result = run_plain_project(pytester, "foo://x")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: DBSCOPE_TEST_URL names a database URL dbscope refuses; fix DBSCOPE_TEST_URL.*"]
    )
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_a_refused_url_given_by_the_option_is_a_usage_error_without_its_password(
    pytester: pytest.Pytester,
) -> None:
    """--dbscope-url with a synchronous driver: a usage error naming the option and the fix,
    and not the password."""
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    pytester.makefile(".ini", pytest=PLAIN_INI)
    url = "postgresql+psycopg2://app:Pw-s3cret-9@db.internal/test"

    result = run(pytester, "pytest-asyncio", None, f"--dbscope-url={url}", in_process=True)

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --dbscope-url names a database URL dbscope refuses*"])
    result.stderr.fnmatch_lines(["*'postgresql+asyncpg://'*"])
    assert "s3cret" not in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize("quiet", ["-q", "--no-header"])
def test_a_refused_url_is_a_usage_error_without_the_header_too(
    pytester: pytest.Pytester, quiet: str
) -> None:
    """-q and --no-header leave the header out: the URL is refused all the same, before any
    test (before, every test errored, naming neither the variable nor the fix)."""
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    pytester.makefile(".ini", pytest=PLAIN_INI)
    url = "postgresql+psycopg2://app:Pw-s3cret-9@db.internal/test"

    result = run(pytester, "pytest-asyncio", url, quiet, in_process=True)

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: DBSCOPE_TEST_URL names a database URL dbscope refuses*"])
    assert "s3cret" not in result.stdout.str() + result.stderr.str()


FAILING_WITH_THE_URLS = """
def test_fails(dbscope_url, dbscope_run_url):
    seen = dbscope_run_url
    assert seen.startswith("postgresql+asyncpg://app:")  # the password is there to connect with
    assert {failing}
"""


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://app:Pw-s3cret-9@db.internal/test",
        "postgresql+asyncpg://app@db.internal/test?password=Pw-s3cret-9",
    ],
)
@pytest.mark.parametrize("locals_shown", [(), ("-l",)])
@pytest.mark.parametrize(
    "failing",
    [
        "not seen",
        # pytest's own explanation of == diffs the two strings, password and all
        "seen == 'postgresql+asyncpg://app:Pw-s3cret-8@db.internal/test'",
        # so it does for a string made of the fixture (a plain str)
        "f'{seen}/x' == 'postgresql+asyncpg://app:Pw-s3cret-8@db.internal/test'",
        "'x' in seen",
    ],
)
def test_a_failed_test_that_takes_the_urls_shows_them_without_the_password(
    pytester: pytest.Pytester, url: str, locals_shown: tuple[str, ...], failing: str
) -> None:
    """pytest prints a failed test's arguments (and with -l its variables) by their repr:
    the URL fixtures' repr masks the password, where a plain str showed it."""
    pytester.makepyfile(test_urls=FAILING_WITH_THE_URLS.format(failing=failing))
    pytester.makefile(".ini", pytest=PLAIN_INI)

    result = run(pytester, "pytest-asyncio", url, *locals_shown, in_process=True)

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*dbscope_run_url = 'postgresql+asyncpg://app:***@db.internal*"])
    shown = result.stdout.str() + result.stderr.str()
    assert "s3cret-9" not in shown
    if "==" in failing and "?password=" not in url:  # (there the first assert fails)
        # the test's own literal is in its source line, never in the diff
        assert shown.count("s3cret-8") == 1, shown
        result.stdout.fnmatch_lines(["*dbscope shows database URLs without their passwords*"])
