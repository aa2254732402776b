"""SQLite: sqlite3 and aiosqlite on a file, WAL, writers that wait for the write lock."""

from __future__ import annotations

import sqlite3
import time
from typing import Any, ClassVar

from sqlalchemy import Connection, Engine, Insert, bindparam, delete, event, select, type_coerce
from sqlalchemy import Text as TextType
from sqlalchemy import text as sql_text
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import URL
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql import ClauseElement, ColumnElement

from langchain_sqlcache.backends.base import Backend
from langchain_sqlcache.errors import ConfigurationError
from langchain_sqlcache.statements import (
    entry,
    entry_binds,
    generation,
    insert_generations,
    on_conflict_upsert,
)
from langchain_sqlcache.timeouts import Timeouts

BUSY_TIMEOUT_SECONDS = 30.0
WAL_RETRY_SECONDS = 0.01
ROWS_PER_INSERT = 64
"""The most generations an update writes in one multi-row INSERT (7 parameters each): SQLite
caps the parameters of a statement (999 before 3.32), and each count compiles a statement
of its own, so a value of more goes through a Connection."""


class SQLite(Backend):
    """SQLite 3.35+ on a file (RETURNING, upserts)."""

    name: ClassVar[str] = "sqlite"
    pip_extra: ClassVar[str] = "sqlite"
    sync_driver: ClassVar[str] = "pysqlite"
    async_driver: ClassVar[str] = "aiosqlite"
    connections_go_stale: ClassVar[bool] = False  # a file's never go stale or read-only
    statements_one_per_call: ClassVar[bool] = True
    bounded_pool_wait: ClassVar[bool] = False

    def check_url(self, url: URL) -> None:
        """Refuse an in-memory database, which belongs to one connection."""
        if url.database in (None, "", ":memory:"):
            msg = (
                "an in-memory SQLite database belongs to one connection, so threads and the "
                "sync and async methods would each see a different cache; use a file "
                "(sqlite:///cache.db), or pass engine=/async_engine= built the way you want"
            )
            raise ConfigurationError(msg)

    def engine_defaults(self, url: URL, *, transaction_pooler: bool) -> dict[str, Any]:
        """Wait for a writer rather than fail with "database is locked" at once."""
        return {"connect_args": {"timeout": BUSY_TIMEOUT_SECONDS}}

    def configure(self, engine: Engine, timeouts: Timeouts | None, given: dict[str, Any]) -> None:
        """Foreign keys, WAL and NORMAL sync on each connection; writers BEGIN IMMEDIATE."""
        event.listen(engine, "connect", _configure_connection)
        event.listen(engine, "begin", _begin_immediate)

    def database_file(self, url: URL) -> str | None:
        """The file as SQLAlchemy reads the URL (percent-escapes decoded, no query string)."""
        return url.database or None

    def upsert_entry(self, *, returning: bool = True) -> Insert:
        """INSERT ... ON CONFLICT (key_hash) DO UPDATE, RETURNING the entry's id."""
        return on_conflict_upsert(sqlite.insert, returning=returning)

    def as_text(self, column: ColumnElement[Any]) -> ColumnElement[str]:
        """JSON is text already."""
        return type_coerce(column, TextType)

    def whole_value_write(self, generations: int) -> tuple[ClauseElement, ...]:
        """An update's transaction as statements for the driver's cursor, one by one.

        In-process, so the point is not round trips but SQLAlchemy's execution path, which
        costs each statement more than SQLite takes to run it. The entry's id is found by
        its key inside the statements, so no statement waits for another's result.
        """
        entry_id_of_key = (
            select(entry.c.id)
            .where(entry.c.key_hash == bindparam("key_hash", type_=entry.c.key_hash.type))
            .scalar_subquery()
        )
        return (
            # Take the write lock first: a deferred transaction cannot wait for it (see
            # _begin_immediate).
            sql_text("BEGIN IMMEDIATE"),
            self.upsert_entry(returning=False).values(entry_binds()),
            delete(generation).where(generation.c.entry_id == entry_id_of_key),
            insert_generations(generations, entry_id_of_key),
            sql_text("COMMIT"),
        )

    def writes_in_one_call(self, generations: int, *, multi_statements: bool) -> bool:
        """Up to ROWS_PER_INSERT generations."""
        return generations <= ROWS_PER_INSERT

    def acquire_migration_lock(self, connection: Connection) -> None:
        """The database's write lock, unless the transaction holds it already.

        pysqlite runs DDL outside transactions; take the write lock now, so a second
        migrator waits (busy timeout) and then finds the work done. Engines built by this
        package began the transaction that way already (_begin_immediate).
        """
        if not getattr(connection.connection.driver_connection, "in_transaction", False):
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def _configure_connection(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # ON DELETE CASCADE needs foreign keys on; WAL lets readers run beside a writer.
        cursor.execute("PRAGMA foreign_keys = ON")
        _switch_to_wal(cursor)
        # In WAL mode NORMAL syncs at checkpoints, not at every commit: a crash of the
        # process loses nothing, one of the machine may lose the last writes (never the
        # file's consistency). For a cache, a few recent entries are worth less than an
        # fsync per update.
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _switch_to_wal(cursor: Any) -> None:
    """Put the file in WAL mode, waiting out other connections that are opening it too.

    The switch needs the file to itself, and SQLite refuses it with "database is locked" at
    once, without the busy timeout, while another connection holds a lock: processes that
    open a new cache file together (concurrent first migrations) would fail. The mode
    persists in the file, so this loop only ever runs on a brand-new one.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(WAL_RETRY_SECONDS)


def _begin_immediate(connection: Connection) -> None:
    """Start each SQLite transaction holding the write lock (BEGIN IMMEDIATE).

    A deferred transaction that reads before it writes cannot wait for the lock when another
    writer got there first (SQLite fails it with "database is locked" at once); an immediate
    one waits out the busy timeout. Autocommit connections (lookups) take no lock.
    """
    driver_connection = connection.connection.driver_connection
    if getattr(driver_connection, "isolation_level", "") is not None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


BACKEND = SQLite()
