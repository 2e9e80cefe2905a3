"""`dbscope check` with read replicas: a line per replica, on the real primary and streaming
replica of tests/replica_cluster.py; one that serves no reads fails the check."""

from __future__ import annotations

from sqlalchemy.engine import make_url

from tests.cli_runs import SECRET, dbscope, output_of

pytest_plugins = ["tests.replica_fixtures"]


def replica_lines(text: str) -> list[str]:
    """The `replica:` lines of `dbscope check`, their name cut off."""
    return [
        line.removeprefix("replica:").strip()
        for line in text.splitlines()
        if line.startswith("replica:")
    ]


async def test_check_shows_a_ready_replica_and_its_lag(urls: tuple[str, str]) -> None:
    """A streaming replica: ready, its lag in bytes; the check passes."""
    primary, replica = urls
    environment = {"DATABASE_URL": primary, "DATABASE_REPLICA_URLS": replica}
    done = await dbscope("check", environment=environment)
    output = output_of(done)
    name = f"{make_url(replica).host}:{make_url(replica).port}/{make_url(replica).database}"
    assert done.returncode == 0, output
    [line] = replica_lines(output)
    assert line.startswith(f"{name} ready, ")
    assert line.endswith(" bytes behind the primary")


async def test_check_fails_on_a_replica_that_refuses_the_connection_saying_why(
    urls: tuple[str, str],
) -> None:
    """A replica URL naming a database the replica has not: the line says the refusal's own
    message and fails the check (exit 1); no password shown."""
    primary, replica = urls
    wrong = make_url(replica).set(database="no_such_database", password=SECRET)
    environment = {
        "DATABASE_URL": primary,
        "DATABASE_REPLICA_URLS": wrong.render_as_string(hide_password=False),
    }
    done = await dbscope("check", environment=environment)
    output = output_of(done)
    assert done.returncode == 1, output
    [line] = replica_lines(output)
    assert line.startswith("FAIL ")
    assert "down, serves no reads: Could not connect to postgresql" in line
    assert 'database "no_such_database" does not exist' in line
    assert SECRET not in output
