"""Alembic environment of langchain-sqlcache.

Used from the repository root (``alembic upgrade head``) and, through a Config built in code,
by ``langchain-sqlcache db ...``, ``langchain_sqlcache.migrations`` and ``SQLCache``.

Where the database comes from, first match wins: a connection handed over in
``config.attributes["connection"]``; ``-x url=...``; ``sqlalchemy.url`` of the Config;
``$LANGCHAIN_SQLCACHE_URL``; the embedded SQLite file. ``-x schema=NAME`` (or
``config.attributes["schema"]``) puts the tables and the version table in that Postgres schema
(created if absent) or MySQL database.
"""

from __future__ import annotations

import asyncio

from alembic import context
from alembic.operations import Operations
from sqlalchemy import Connection
from sqlalchemy.schema import CreateSchema

from langchain_sqlcache.engines import (
    create_async_migration_engine,
    create_migration_engine,
    names_async_driver,
    resolve_url,
)
from langchain_sqlcache.errors import checked_identifier
from langchain_sqlcache.migrations import VERSION_TABLE, acquire_lock, is_cache_name, release_lock
from langchain_sqlcache.models import metadata

config = context.config
x_arguments = context.get_x_argument(as_dictionary=True)
schema = checked_identifier(x_arguments.get("schema") or config.attributes.get("schema"))


def database_url() -> str | None:
    return x_arguments.get("url") or config.get_main_option("sqlalchemy.url")


def configure(**options: object) -> None:
    context.configure(
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        version_table_schema=schema,
        # Only our tables: a host application's tables in the same database are not ours to
        # compare, create or drop.
        include_name=is_cache_name,
        compare_type=True,
        **options,
    )


def create_schema_if_absent(dialect_name: str) -> None:
    if schema is not None and dialect_name == "postgresql":
        context.execute(CreateSchema(schema, if_not_exists=True))


def drop_version_table_at_base() -> None:
    """After a downgrade to base, remove our version table too: nothing of ours is left."""
    migration_context = context.get_context()
    destination = migration_context.opts.get("destination_rev")
    if destination is None:  # current, check: not a migration run
        return
    if migration_context.as_sql:
        at_base = destination == "base"
    else:
        at_base = migration_context.get_current_revision() is None
    if at_base:
        Operations(migration_context).drop_table(VERSION_TABLE, schema=schema)


def run_migrations_offline() -> None:
    """Print the DDL for review (`--sql`) instead of running it."""
    url = resolve_url(database_url())
    configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        create_schema_if_absent(url.get_backend_name())
        context.run_migrations()
        drop_version_table_at_base()


def run_on_connection(connection: Connection) -> None:
    """Migrate on one connection, holding the migration lock for the whole run."""
    # The caller's transaction is ended first, so that ours owns the DDL and the lock.
    if connection.in_transaction():
        connection.commit()
    try:
        with connection.begin():
            acquire_lock(connection)
            configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
            with context.begin_transaction():
                create_schema_if_absent(connection.dialect.name)
                context.run_migrations()
                drop_version_table_at_base()
    finally:
        release_lock(connection)
        if connection.in_transaction():
            connection.commit()


async def run_async(url_text: str | None) -> None:
    engine = create_async_migration_engine(resolve_url(url_text))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_on_connection)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_on_connection(connection)
        return
    url = resolve_url(database_url())
    if names_async_driver(url):
        asyncio.run(run_async(url.render_as_string(hide_password=False)))
        return
    engine = create_migration_engine(url)
    try:
        with engine.connect() as connection:
            run_on_connection(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
