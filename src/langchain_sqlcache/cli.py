"""The ``langchain-sqlcache`` command.

Exit codes: 0 success; 1 ``db check`` found the database behind the package, or ``clear``
was not confirmed; 2 a usage error; 3 a configuration or database error (printed as one
line, without a traceback); 4 ``import`` skipped lines (each reported on stderr) and imported
every other one. (1 is also what Python exits with on an uncaught error: a partial import
has a code of its own.)

Every command printed for the user to run is shell-quoted, so it can be pasted as it is.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click
from sqlalchemy.exc import SQLAlchemyError

from langchain_sqlcache import migrations, transfer
from langchain_sqlcache.backends import backend_for
from langchain_sqlcache.cache import CacheStats, SQLCache
from langchain_sqlcache.engines import DEFAULT_URL, URL_ENV_VAR, resolve_url
from langchain_sqlcache.errors import SQLCacheError

EXIT_BEHIND = 1
EXIT_SKIPPED = 1
EXIT_ERROR = 3
EXIT_PARTIAL = 4
DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

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
urls_option = click.option(
    "--url",
    "urls",
    multiple=True,
    envvar=URL_ENV_VAR,
    default=(DEFAULT_URL,),
    show_default=True,
    help=(
        f"Database URL (default: ${URL_ENV_VAR}, then the embedded SQLite file). Given "
        "several times, the shards of a sharded cache: the command runs on each."
    ),
)
schema_option = click.option(
    "--schema", default=None, help="Postgres schema or MySQL database that holds the tables."
)
namespace_option = click.option(
    "--namespace", default="", show_default=True, help="The cache's namespace."
)


def _cache(urls: Sequence[str], namespace: str, schema: str | None, **options: Any) -> SQLCache:
    # The CLI never creates tables behind an operator's back: `db upgrade` does that.
    # An operator wants to hear that the database is down, not a quiet "pruned 0".
    # Several URLs are the shards of one cache, in the order the application gives them.
    return SQLCache(
        urls[0] if len(urls) == 1 else None,
        shards=list(urls) if len(urls) > 1 else (),
        namespace=namespace,
        schema=schema,
        create_tables=False,
        on_error="raise",
        **options,
    )


if TYPE_CHECKING:
    # click's ParamType is generic from 8.4; at run time an older one cannot be subscripted.
    _AgeParamType = click.ParamType[timedelta | datetime]
else:
    _AgeParamType = click.ParamType


class Age(_AgeParamType):
    """A duration (30d, 12h, 90m, 45s, 2w) or an ISO datetime with a time zone."""

    name = "age"

    def convert(self, value: Any, param: Any, ctx: Any) -> timedelta | datetime:
        """Parse the value, or fail with a usage error."""
        if isinstance(value, (timedelta, datetime)):
            return value
        match = DURATION.match(str(value))
        if match:
            return timedelta(**{DURATION_UNITS[match.group(2)]: float(match.group(1))})
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            moment = None
        if moment is None or moment.tzinfo is None:
            self.fail(f"{value!r} is neither a duration (30d, 12h) nor an ISO datetime with a zone")
        return moment


llm_string_option = click.option(
    "--llm-string", default=None, help="Only the entries of this llm_string."
)
older_than_option = click.option(
    "--older-than",
    type=Age(),
    default=None,
    help="Only entries last written longer ago: 30d, 12h, ... or an ISO datetime.",
)


def _filters(
    llm_string: str | None, older_than: timedelta | datetime | None, expired_only: bool = False
) -> dict[str, Any]:
    """The filter options given, as keyword arguments of SQLCache.clear() (which parses them)."""
    given: dict[str, Any] = {"llm_string": llm_string, "older_than": older_than}
    filters = {name: value for name, value in given.items() if value is not None}
    if expired_only:
        filters["expired_only"] = True
    return filters


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers, *[["" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


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


def _each(urls: Sequence[str]) -> Iterator[str]:
    """The URLs in turn, each announced when there are several (the shards of a cache)."""
    for url in urls:
        if len(urls) > 1:
            click.echo(f"{_shown(url)}:")
        yield url


def _migrate(
    operation: Callable[..., str | None],
    revision: str,
    urls: Sequence[str],
    schema: str | None,
    sql: bool,
) -> None:
    """Run an upgrade or downgrade on each database; print its SQL (--sql) or its revision."""
    for url in _each(urls):
        output = operation(resolve_url(url), revision, schema=schema, sql=sql)
        if output is not None:
            click.echo(output, nl=False)
        else:
            click.echo(f"at {migrations.current(resolve_url(url), schema=schema) or 'none'}")


@db.command()
@click.argument("revision", default="head")
@urls_option
@schema_option
@sql_option
@_one_line_errors
def upgrade(revision: str, urls: tuple[str, ...], schema: str | None, sql: bool) -> None:
    """Upgrade the cache's tables to REVISION (default: head), on each --url."""
    _migrate(migrations.upgrade, revision, urls, schema, sql)


@db.command()
@click.argument("revision")
@urls_option
@schema_option
@sql_option
@_one_line_errors
def downgrade(revision: str, urls: tuple[str, ...], schema: str | None, sql: bool) -> None:
    """Downgrade the cache's tables to REVISION ('base' removes every table of ours)."""
    _migrate(migrations.downgrade, revision, urls, schema, sql)


@db.command()
@urls_option
@schema_option
@_one_line_errors
def current(urls: tuple[str, ...], schema: str | None) -> None:
    """Print the revision each database is at ('none' when the cache has no tables)."""
    for url in _each(urls):
        click.echo(migrations.current(resolve_url(url), schema=schema) or "none")


@db.command()
@urls_option
@schema_option
@_one_line_errors
def check(urls: tuple[str, ...], schema: str | None) -> None:
    """Exit 0 when every database is at the package's head revision, 1 when one is behind."""
    head = migrations.head_revision()
    behind = False
    for url in _each(urls):
        found = migrations.current(resolve_url(url), schema=schema)
        if found == head:
            click.echo(f"up to date: {head}")
            continue
        behind = True
        click.echo(
            f"behind: database at {found or 'none'}, package at {head}; run: "
            f"{migrations.upgrade_command(url, schema)}"
        )
    if behind:
        sys.exit(EXIT_BEHIND)


@main.command()
@url_option
@click.option("--latency", default=0.4, show_default=True, help="Simulated model latency (s).")
@_one_line_errors
def demo(url: str, latency: float) -> None:
    """Run a chat model through the cache twice, sync and async, and show what it did."""
    from langchain_sqlcache import demo as demo_module

    cache = SQLCache(url, namespace=demo_module.NAMESPACE, record_hits=True, on_error="raise")
    cache.store.ready()  # connect (and migrate an empty database) before printing
    click.secho(f"langchain-sqlcache demo on {_shown(url)}", bold=True)
    click.echo(f"A fake chat model that takes {latency * 1000:.0f} ms, asked each prompt twice.\n")
    timings = demo_module.run(cache, click.echo, latency)
    rows = [
        [family, prompt, f"{first:8.1f}", f"{second:6.1f}", f"{first / second:6.0f}x"]
        for family, prompt, first, second in timings
    ]
    headers = ["family", "prompt", "miss (ms)", "hit (ms)", "faster"]
    click.echo(_table(headers, rows))
    stats = cache.stats()
    click.secho("\nstats()", bold=True)
    click.echo(_stats_table(stats))
    sql, columns, result = demo_module.analyst_rows(cache)
    click.secho("\nAn analyst's query over the llm_cache_outputs view:", bold=True)
    click.echo(" ".join(sql.split()))
    click.echo(_table(columns, [list(row) for row in result]))
    cache.close()
    parsed = resolve_url(url)
    path = backend_for(parsed).database_file(parsed)
    if path is not None:
        look = shlex.join(["sqlite3", path, "SELECT * FROM llm_cache_outputs"])
        click.echo(f"\nThe cache is in {path}; look inside: {look}")


@main.command()
@urls_option
@namespace_option
@schema_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_one_line_errors
def stats(urls: tuple[str, ...], namespace: str, schema: str | None, as_json: bool) -> None:
    """Entries, generations, bytes, expired entries and hits of a namespace, by model."""
    cache = _cache(urls, namespace, schema)
    try:
        result = cache.stats()
    finally:
        cache.close()
    if as_json:
        # Entries without a model are under the key "null".
        click.echo(json.dumps(result.as_dict(), indent=2))
    else:
        click.echo(_stats_table(result))


def _stats_table(stats: CacheStats) -> str:
    rows = [
        [model or "(unknown)", m.entries, m.generations, m.bytes, m.expired, m.hits]
        for model, m in sorted(stats.models.items(), key=lambda item: str(item[0]))
    ]
    rows.append(["total", stats.entries, stats.generations, stats.bytes, stats.expired,
                 stats.hits])  # fmt: skip
    return _table(["model", "entries", "generations", "bytes", "expired", "hits"], rows)


@main.command()
@urls_option
@namespace_option
@schema_option
@click.option("--max-entries", type=int, default=None, help="Cap on the namespace's entries.")
@click.option("--max-bytes", type=int, default=None, help="Cap on the namespace's bytes.")
@_one_line_errors
def prune(
    urls: tuple[str, ...],
    namespace: str,
    schema: str | None,
    max_entries: int | None,
    max_bytes: int | None,
) -> None:
    """Delete expired entries, then the oldest over the caps, in batches."""
    cache = _cache(urls, namespace, schema, max_entries=max_entries, max_bytes=max_bytes)
    try:
        click.echo(f"pruned {cache.prune()} entries")
    finally:
        cache.close()


@main.command()
@urls_option
@namespace_option
@schema_option
@llm_string_option
@older_than_option
@click.option("--expired-only", is_flag=True, help="Only entries whose ttl has passed.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_one_line_errors
def clear(
    urls: tuple[str, ...],
    namespace: str,
    schema: str | None,
    llm_string: str | None,
    older_than: timedelta | datetime | None,
    expired_only: bool,
    yes: bool,
) -> None:
    """Delete a namespace's entries (or those matching the filters), in batches."""
    cache = _cache(urls, namespace, schema)
    try:
        before = cache.stats().entries
        where = ", ".join(map(_shown, urls))
        question = f"Clear namespace {namespace!r} ({before} entries, before filters) on {where}?"
        if not yes and not _confirmed(question):
            click.echo("not cleared", err=True)
            sys.exit(EXIT_SKIPPED)
        cache.clear(**_filters(llm_string, older_than, expired_only))
        click.echo(f"cleared {before - cache.stats().entries} entries")
    finally:
        cache.close()


@main.command(name="export")
@urls_option
@click.option("--namespace", default=None, help="Only this namespace (default: all).")
@schema_option
@llm_string_option
@older_than_option
@click.option("--output", "-o", type=click.File("w", encoding="utf-8"), default="-",
              help="File to write (default: standard output).")  # fmt: skip
@_one_line_errors
def export_command(
    urls: tuple[str, ...],
    namespace: str | None,
    schema: str | None,
    llm_string: str | None,
    older_than: timedelta | datetime | None,
    output: IO[str],
) -> None:
    """Write the cache (or a namespace, or the entries matching the filters) as JSON Lines.

    Streams in pages, with a progress bar on standard error.
    """
    if isinstance(older_than, timedelta):
        # One cutoff for the count and the export, so that the progress bar's total is exact.
        older_than = datetime.now(timezone.utc) - older_than
    filters = _filters(llm_string, older_than)
    cache = _cache(urls, namespace or "", schema)
    try:
        total = transfer.count(cache, all_namespaces=namespace is None, **filters)
        records = transfer.export_records(cache, all_namespaces=namespace is None, **filters)
        with click.progressbar(records, length=total, label="export", file=sys.stderr) as bar:
            for record in bar:
                output.write(transfer.to_line(record))
    finally:
        cache.close()
    click.echo(f"exported {total} entries", err=True)


@main.command(name="import")
# Bytes: each line is decoded on its own, so that one that is not UTF-8 is reported and
# skipped like any other bad line.
@click.argument("source", type=click.File("rb"))
@urls_option
@click.option(
    "--namespace", default=None, help="Import into this namespace (default: each line's)."
)
@schema_option
@_one_line_errors
def import_command(
    urls: tuple[str, ...], source: IO[bytes], namespace: str | None, schema: str | None
) -> None:
    """Read JSON Lines from SOURCE ('-' for standard input) into the cache; idempotent.

    A line that cannot be imported (not UTF-8 or JSON, not a valid record, a namespace the
    cache refuses, too large for the server, refused by the database) is reported on
    standard error with its number and skipped; every other line is imported. Exit 0 when
    every line was imported, 4 when some were skipped.
    """
    cache = _cache(urls, namespace or "", schema)

    def skipped(number: int, reason: str) -> None:
        click.echo(f"line {number}: skipped: {reason}", err=True)

    try:
        for store in cache.topology.primaries:  # fail on a database before the progress bar
            store.ready()
        with click.progressbar(source, label="import", file=sys.stderr) as lines:
            result = transfer.import_lines(
                cache, lines, keep_namespaces=namespace is None, on_skip=skipped
            )
    finally:
        cache.close()
    click.echo(f"imported {result.imported} entries, skipped {result.skipped} lines", err=True)
    if result.skipped:
        sys.exit(EXIT_PARTIAL)


def _confirmed(question: str) -> bool:
    try:
        return click.confirm(question)
    except click.Abort:  # no answer (end of input): not a yes
        click.echo("", err=True)
        return False


def _shown(url: str) -> str:
    return resolve_url(url).render_as_string(hide_password=True)
