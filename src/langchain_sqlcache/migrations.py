"""The cache's schema under Alembic: the Config built in code, and the API CLI and cache use.

The migration scripts are the repository's top-level ``alembic/`` folder; the wheel carries a
copy as ``langchain_sqlcache/_alembic`` (a build-time include), so ``pip install`` users run
the very same scripts with ``langchain-sqlcache db upgrade``.

Our history is recorded in ``llm_cache_alembic_version``, never in ``alembic_version``, so a
host application's own Alembic history in the same database is never touched.
"""

from __future__ import annotations

import contextlib
import functools
import io
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Connection, Engine, MetaData, String, Table, inspect, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError

from langchain_sqlcache.backends import backend_for
from langchain_sqlcache.errors import SchemaError, checked_identifier

VERSION_TABLE = "llm_cache_alembic_version"
CACHE_TABLES = frozenset({"llm_cache_entry", "llm_cache_generation"})
OWN_TABLES = CACHE_TABLES | {VERSION_TABLE}
LOCK_NAME = "langchain_sqlcache_migrations"


def script_location() -> Path:
    """The folder that holds env.py and versions/: the wheel's copy, else the repository's."""
    packaged = Path(str(resources.files("langchain_sqlcache"))) / "_alembic"
    if packaged.is_dir():
        return packaged
    # An editable install or a source checkout: src/langchain_sqlcache -> repository root.
    return Path(__file__).resolve().parents[2] / "alembic"


def make_config(
    url: str | URL | None = None,
    *,
    schema: str | None = None,
    connection: Connection | None = None,
    output_buffer: Any = None,
) -> Config:
    """Build the Alembic Config in code, from the package's location (no alembic.ini).

    ``output_buffer`` receives the SQL of offline (``--sql``) runs.
    """
    config = Config(output_buffer=output_buffer)
    config.set_main_option("script_location", str(script_location()))
    if url is not None:
        rendered = url.render_as_string(hide_password=False) if isinstance(url, URL) else url
        # Config values go through ConfigParser interpolation: a % in a password must be %%.
        config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    config.attributes["connection"] = connection
    config.attributes["schema"] = checked_identifier(schema)
    return config


@functools.cache
def head_revision() -> str:
    """The newest revision the installed package knows (read from the scripts once)."""
    head = ScriptDirectory.from_config(make_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships a revision
        msg = "no migration scripts found"
        raise SchemaError(msg)
    return head


Target = str | URL | Engine | Connection


@contextlib.contextmanager
def _config_for(target: Target, schema: str | None, output: Any = None) -> Iterator[Config]:
    if isinstance(target, Connection):
        yield make_config(schema=schema, connection=target, output_buffer=output)
    elif isinstance(target, Engine):
        with target.connect() as connection:
            yield make_config(schema=schema, connection=connection, output_buffer=output)
    else:
        yield make_config(target, schema=schema, output_buffer=output)


def upgrade(
    target: Target, revision: str = "head", *, schema: str | None = None, sql: bool = False
) -> str | None:
    """Upgrade the cache's schema to ``revision``; with ``sql`` return the DDL instead.

    ``target`` is a URL (async drivers too), an Engine or a Connection. Concurrent upgrades
    of one database serialize on a lock, so each revision is applied exactly once.
    """
    buffer = io.StringIO()
    with _config_for(target, schema, buffer) as config:
        command.upgrade(config, revision, sql=sql)
    return buffer.getvalue() if sql else None


def downgrade(
    target: Target, revision: str, *, schema: str | None = None, sql: bool = False
) -> str | None:
    """Downgrade the cache's schema to ``revision`` (``base`` removes every table of ours)."""
    buffer = io.StringIO()
    with _config_for(target, schema, buffer) as config:
        command.downgrade(config, revision, sql=sql)
    return buffer.getvalue() if sql else None


def current(target: Target, *, schema: str | None = None) -> str | None:
    """The revision the database is at, or None when our version table is absent or empty."""
    checked_identifier(schema)
    if isinstance(target, Connection):
        return _current_of(target, schema)
    if isinstance(target, Engine):
        with target.connect() as connection:
            return _current_of(connection, schema)
    from langchain_sqlcache.engines import create_migration_engine

    engine = create_migration_engine(make_url(target) if isinstance(target, str) else target)
    try:
        with engine.connect() as connection:
            return _current_of(connection, schema)
    finally:
        engine.dispose()


def _current_of(connection: Connection, schema: str | None) -> str | None:
    return read_state(connection, schema).revision


@dataclass(frozen=True)
class SchemaState:
    """What the one startup query found."""

    revision: str | None
    """The stamped revision; None when the version table is absent or empty."""
    tables_exist: bool


def read_state(connection: Connection, schema: str | None) -> SchemaState:
    """Read the stamped revision with one query (and look for tables when there is none).

    Runs once per engine when a cache first uses it, never per lookup. Leaves no
    transaction open.
    """
    version_num = Table(
        VERSION_TABLE, MetaData(), Column("version_num", String(32)), schema=schema
    ).c.version_num
    try:
        revision = connection.execute(select(version_num)).scalar()
    except DBAPIError:
        # No version table (or no right to read it): are any of our tables there at all?
        connection.rollback()
        tables = set(inspect(connection).get_table_names(schema=schema))
        connection.rollback()
        return SchemaState(revision=None, tables_exist=bool(tables & OWN_TABLES))
    connection.rollback()
    return SchemaState(revision=revision, tables_exist=True)


def upgrade_command(url: str | URL | None, schema: str | None) -> str:
    """The command that brings a database to the installed package's revision.

    Shell-quoted, so that it can be pasted as it is whatever the URL holds.
    """
    shown = "URL" if url is None else make_url(url).render_as_string(hide_password=True)
    schema_option = ["--schema", schema] if schema else []
    return shlex.join(["langchain-sqlcache", "db", "upgrade", "--url", shown, *schema_option])


def ensure_schema(connection: Connection, schema: str | None, *, create: bool) -> None:
    """Make sure the cache's tables are at the installed package's head revision.

    An empty database is migrated to head when ``create`` is true. A database at another
    revision is never altered: the error names the command that fixes it.
    """
    head = head_revision()
    state = read_state(connection, schema)
    if state.revision == head:
        return
    fix = upgrade_command(connection.engine.url, schema)
    if state.revision is None and not state.tables_exist:
        if not create:
            msg = f"the cache's tables do not exist (create_tables=False); run: {fix}"
            raise SchemaError(msg)
        upgrade(connection, "head", schema=schema)
        return
    if state.revision is None:
        msg = (
            "the cache's tables exist but carry no version in "
            f"{VERSION_TABLE}; stamp or recreate them, then run: {fix}"
        )
        raise SchemaError(msg)
    known = {s.revision for s in ScriptDirectory.from_config(make_config()).walk_revisions()}
    if state.revision not in known:
        msg = (
            f"the database is at revision {state.revision}, newer than this package "
            f"(head {head}); upgrade langchain-sqlcache"
        )
        raise SchemaError(msg)
    msg = f"the cache's schema is at revision {state.revision}, expected {head}; run: {fix}"
    raise SchemaError(msg)


def is_cache_name(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
    """Tell whether a reflected name belongs to this cache (tables, their indexes, ...)."""
    if type_ == "schema":
        return True
    table = name if type_ == "table" else parent_names.get("table_name")
    return table in OWN_TABLES


def include_name(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
    """An ``include_name`` filter for a host application's env.py.

    Keeps the cache's tables and version table out of the application's autogenerate::

        from langchain_sqlcache.migrations import include_name
        context.configure(..., include_name=include_name)
    """
    return type_ == "schema" or not is_cache_name(name, type_, parent_names)


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """An ``include_object`` filter for a host application's env.py (see include_name)."""
    table = getattr(obj, "table", obj) if type_ != "table" else obj
    table_name = getattr(table, "name", name)
    return table_name not in OWN_TABLES


def migration_schema() -> str | None:
    """The schema a running migration targets (for the revision scripts' ``schema=``)."""
    from alembic import op

    schema: str | None = op.get_context().version_table_schema
    return schema


def acquire_lock(connection: Connection) -> None:
    """Serialize concurrent upgrades of one database; runs at the start of the transaction."""
    backend_for(connection.dialect).acquire_migration_lock(connection)


def release_lock(connection: Connection) -> None:
    """Release what acquire_lock took that outlives a transaction (MySQL's named lock)."""
    backend_for(connection.dialect).release_migration_lock(connection)
