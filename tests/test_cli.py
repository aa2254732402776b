"""The `langchain-sqlcache db ...` commands, their exit codes and their one-line errors."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url

from langchain_sqlcache import migrations
from langchain_sqlcache.cli import EXIT_BEHIND, EXIT_ERROR, main
from langchain_sqlcache.engines import driver_urls
from langchain_sqlcache.migrations import OWN_TABLES, head_revision


def tables(url: str) -> set[str]:
    engine = create_engine(driver_urls(make_url(url))[0])
    try:
        return set(inspect(engine).get_table_names()) & OWN_TABLES
    finally:
        engine.dispose()


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_db_lifecycle(empty_db: str) -> None:
    code, out, _ = run("db", "check", "--url", empty_db)
    assert (code, out.split(":")[0]) == (EXIT_BEHIND, "behind")
    assert "langchain-sqlcache db upgrade --url" in out
    code, out, _ = run("db", "current", "--url", empty_db)
    assert (code, out.strip()) == (0, "none")
    code, out, _ = run("db", "upgrade", "--url", empty_db, "--sql")
    assert code == 0
    assert "CREATE TABLE llm_cache_entry" in out
    assert tables(empty_db) == set()
    assert run("db", "upgrade", "--url", empty_db)[0] == 0
    assert tables(empty_db) == OWN_TABLES
    code, out, _ = run("db", "current", "--url", empty_db)
    assert (code, out.strip()) == (0, head_revision())
    code, out, _ = run("db", "check", "--url", empty_db)
    assert (code, out.strip()) == (0, f"up to date: {head_revision()}")
    assert run("db", "downgrade", "base", "--url", empty_db)[0] == 0
    assert tables(empty_db) == set()


def test_url_comes_from_the_environment(empty_db: str) -> None:
    assert run("db", "upgrade", env={"LANGCHAIN_SQLCACHE_URL": empty_db})[0] == 0
    assert migrations.current(empty_db) == head_revision()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not-a-url", "error: not a database URL: 'not-a-url'"),
        ("postgresql://nobody@127.0.0.1:9/none", "error: connection"),
        ("oracle://u@h/db", "error: unsupported database backend 'oracle'"),
        ("postgresql+psycopg2://u@127.0.0.1:9/db", "pip install 'langchain-sqlcache[postgres]'"),
    ],
    ids=["bad-url", "unreachable", "unsupported", "missing-driver"],
)
@pytest.mark.parametrize("command", ["current", "check", "upgrade"])
def test_errors_are_one_line(command: str, url: str, message: str) -> None:
    code, out, err = run("db", command, "--url", url)
    assert code == EXIT_ERROR
    assert out == ""
    assert err.count("\n") == 1, err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "args", [[], ["db"], ["db", "upgrade"], ["db", "downgrade"], ["db", "current"], ["db", "check"]]
)
def test_help_everywhere(args: list[str]) -> None:
    code, out, _ = run(*args, "--help")
    assert code == 0
    assert "Usage:" in out


def test_usage_errors_exit_2() -> None:
    assert run("db", "downgrade")[0] == 2
    assert run("db", "nope")[0] == 2
