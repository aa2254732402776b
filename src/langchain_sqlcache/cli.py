"""The ``langchain-sqlcache`` command.

Exit codes: 0 success; 1 ``db check`` found the database behind the package; 2 a usage error;
3 a configuration or database error (printed as one line, without a traceback).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from sqlalchemy.exc import SQLAlchemyError

from langchain_sqlcache import migrations
from langchain_sqlcache.engines import DEFAULT_URL, URL_ENV_VAR, resolve_url
from langchain_sqlcache.errors import SQLCacheError

EXIT_BEHIND = 1
EXIT_ERROR = 3

F = TypeVar("F", bound=Callable[..., Any])


def _one_line_errors(command: F) -> F:
    """Report our and the database's errors as one line and a reliable exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (SQLCacheError, SQLAlchemyError) as exc:
            detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            click.echo(f"error: {detail[0] if detail else type(exc).__name__}", err=True)
            sys.exit(EXIT_ERROR)

    return wrapper  # type: ignore[return-value]


url_option = click.option(
    "--url",
    envvar=URL_ENV_VAR,
    default=DEFAULT_URL,
    show_default=True,
    help=f"Database URL (default: ${URL_ENV_VAR}, then the embedded SQLite file).",
)
schema_option = click.option(
    "--schema", default=None, help="Postgres schema or MySQL database that holds the tables."
)
sql_option = click.option(
    "--sql", is_flag=True, help="Print the SQL for review instead of running it."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="langchain-sqlcache")
def main() -> None:
    """LangChain LLM cache in SQLite, Postgres or MySQL/MariaDB."""


@main.group()
def db() -> None:
    """Manage the cache's schema (Alembic migrations shipped with the package)."""


def _migrate(
    operation: Callable[..., str | None], revision: str, url: str, schema: str | None, sql: bool
) -> None:
    """Run an upgrade or downgrade; print its SQL (--sql) or the revision it reached."""
    output = operation(resolve_url(url), revision, schema=schema, sql=sql)
    if output is not None:
        click.echo(output, nl=False)
    else:
        click.echo(f"at {migrations.current(resolve_url(url), schema=schema) or 'none'}")


@db.command()
@click.argument("revision", default="head")
@url_option
@schema_option
@sql_option
@_one_line_errors
def upgrade(revision: str, url: str, schema: str | None, sql: bool) -> None:
    """Upgrade the cache's tables to REVISION (default: head)."""
    _migrate(migrations.upgrade, revision, url, schema, sql)


@db.command()
@click.argument("revision")
@url_option
@schema_option
@sql_option
@_one_line_errors
def downgrade(revision: str, url: str, schema: str | None, sql: bool) -> None:
    """Downgrade the cache's tables to REVISION ('base' removes every table of ours)."""
    _migrate(migrations.downgrade, revision, url, schema, sql)


@db.command()
@url_option
@schema_option
@_one_line_errors
def current(url: str, schema: str | None) -> None:
    """Print the revision the database is at ('none' when the cache has no tables)."""
    click.echo(migrations.current(resolve_url(url), schema=schema) or "none")


@db.command()
@url_option
@schema_option
@_one_line_errors
def check(url: str, schema: str | None) -> None:
    """Exit 0 when the database is at the package's head revision, 1 when it is behind."""
    found = migrations.current(resolve_url(url), schema=schema)
    head = migrations.head_revision()
    if found == head:
        click.echo(f"up to date: {head}")
        return
    click.echo(
        f"behind: database at {found or 'none'}, package at {head}; run: "
        f"{migrations.upgrade_command(url, schema)}"
    )
    sys.exit(EXIT_BEHIND)
