"""Postgres: psycopg and asyncpg, PgBouncer in transaction mode, the one-statement update."""

from __future__ import annotations

import hashlib
import math
import uuid
from typing import Any, ClassVar

from sqlalchemy import Connection, Delete, Insert, Text, bindparam, cast, column, delete, func
from sqlalchemy import text as sql_text
from sqlalchemy import true as sql_true
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL
from sqlalchemy.sql import ClauseElement, ColumnElement, select

from langchain_sqlcache.backends.base import Backend
from langchain_sqlcache.errors import is_read_only
from langchain_sqlcache.migrations import LOCK_NAME
from langchain_sqlcache.statements import (
    GENERATION_VALUE_COLUMNS,
    entry,
    entry_binds,
    generation,
    on_conflict_upsert,
)
from langchain_sqlcache.timeouts import Timeouts, milliseconds

# pg_advisory_xact_lock takes a bigint: a stable number derived from the lock's name.
LOCK_KEY = int.from_bytes(hashlib.sha256(LOCK_NAME.encode()).digest()[:8], "big", signed=True)


class Postgres(Backend):
    """Postgres 15+ (and what speaks its protocol with its SQL)."""

    name: ClassVar[str] = "postgresql"
    pip_extra: ClassVar[str] = "postgres"
    sync_driver: ClassVar[str] = "psycopg"
    async_driver: ClassVar[str] = "asyncpg"
    default_port: ClassVar[int | None] = 5432
    generations_by_position: ClassVar[bool] = False
    stores_time_zones: ClassVar[bool] = True
    behind_transaction_poolers: ClassVar[bool] = True

    def engine_defaults(self, url: URL, *, transaction_pooler: bool) -> dict[str, Any]:
        """No named prepared statements behind a transaction pooler.

        A later transaction, served by another server connection, would miss them or find
        their names taken.
        """
        if transaction_pooler and url.get_driver_name() in ("psycopg", "psycopg_async"):
            return {"connect_args": {"prepare_threshold": None}}
        if transaction_pooler and url.get_driver_name() == "asyncpg":
            # SQLAlchemy's asyncpg dialect prepares every statement: the names must be
            # unique across all clients of a server connection, and neither cache may keep
            # them.
            return {
                "connect_args": {
                    "statement_cache_size": 0,
                    "prepared_statement_cache_size": 0,
                    "prepared_statement_name_func": _unique_statement_name,
                }
            }
        return {}

    def lookups_in_autocommit(self, driver: str, transaction_pooler: bool) -> bool:
        """Not asyncpg behind a transaction pooler.

        SQLAlchemy's asyncpg dialect prepares a statement, then runs it; outside a
        transaction PgBouncer may hand the two to different server connections, so lookups
        run in a transaction too.
        """
        return not (transaction_pooler and driver == "asyncpg")

    def timeout_args(self, url: URL, timeouts: Timeouts, given: dict[str, Any]) -> dict[str, Any]:
        """Libpq's connect timeout and keepalives (psycopg); asyncpg's own two bounds."""
        connect, read = timeouts.connect, timeouts.read
        args: dict[str, Any] = {}
        if url.get_driver_name() == "asyncpg":
            # asyncpg bounds the whole connection (login included) and, on the client side,
            # each statement: the bound for a server that stops answering mid-statement.
            args["timeout"] = connect
            args["command_timeout"] = read
            return args
        if connect is not None:
            # libpq counts whole seconds, at least 2; psycopg applies it to the whole
            # connection, login included.
            args["connect_timeout"] = max(2, math.ceil(connect))
        if read is not None:
            # libpq has no client-side bound on a statement. A server host that vanished
            # mid-statement (a failover, a partition) would hold the connection forever,
            # since nothing is being sent; keepalive probes find it gone within about
            # read + 3 s. (A frozen server process whose kernel still answers them is not
            # found: see the async path's deadline.)
            args.update(
                keepalives=1,
                keepalives_idle=math.ceil(read),
                keepalives_interval=1,
                keepalives_count=3,
            )
        return args

    def has_read_timeout(self, driver: str) -> bool:
        """Asyncpg has command_timeout; psycopg's async connection has no read bound."""
        return driver != "psycopg_async"

    def session_setup(
        self, timeouts: Timeouts, given: dict[str, Any], *, transaction_pooler: bool
    ) -> str | None:
        """The SET that gives a new connection its statement timeout, if it needs one.

        Run once a connection is open, not sent as a startup parameter (``options``,
        ``server_settings``): PgBouncer, in any mode, refuses the startup parameters it
        does not track. Behind a transaction pooler nothing is set (the SET would stay on a
        server connection other clients share): set ``statement_timeout`` on the role or
        the pooler's ``query_timeout`` instead. A statement_timeout in the user's
        ``options`` or ``server_settings`` is theirs.
        """
        if timeouts.statement is None or transaction_pooler:
            return None
        if "statement_timeout" in f"{given.get('options', '')} {given.get('server_settings', '')}":
            return None
        return f"SET statement_timeout = {milliseconds(timeouts.statement)}"

    def turned_read_only(self, error: BaseException) -> bool:
        """SQLSTATE 25006: the connection reaches a standby."""
        return is_read_only(error)

    def upsert_entry(self, *, returning: bool = True) -> Insert:
        """INSERT ... ON CONFLICT (key_hash) DO UPDATE, RETURNING the entry's id."""
        return on_conflict_upsert(postgresql.insert, returning=returning)

    def as_text(self, column: ColumnElement[Any]) -> ColumnElement[str]:
        """Cast: Postgres drivers parse json themselves unless it comes as text."""
        return cast(column, Text)

    def whole_value_write(self, generations: int) -> tuple[ClauseElement, ...]:
        """One statement for any number of generations (see :func:`replace_value`)."""
        return (replace_value(),)

    def acquire_migration_lock(self, connection: Connection) -> None:
        """A transaction-level advisory lock, released when the migration's transaction ends."""
        connection.execute(sql_text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})


def replace_value() -> Delete:
    """Upsert the entry, write its generations and drop the surplus, in one statement.

    One statement in autocommit is one round trip and one transaction, against five for
    BEGIN, upsert, DELETE, INSERT and COMMIT. The generations arrive as one json array and
    overwrite those at the same positions; the old value's surplus positions are deleted.

    A concurrent writer of the same key whose longer value committed while this statement
    waited for the entry's row lock leaves positions this statement's snapshot cannot see,
    so they survive it. They are past the entry's ``generation_count``, which this statement
    sets, and lookups (and the analysts' view) read only the first ``generation_count``
    positions, so the value read is always exactly this statement's; the next update of the
    key, or its deletion, removes them.
    """
    upserted = (
        BACKEND.upsert_entry(returning=False)
        .values(entry_binds())
        .returning(entry.c.id, entry.c.generation_count)
        .cte("upserted")
    )
    incoming = (
        # json, not jsonb: json_to_recordset hands each document on as the text it was
        # sent as (key order, 1e23, -0.0), which the json columns then keep.
        func.json_to_recordset(bindparam("generation_rows", type_=postgresql.JSON))
        .table_valued(
            *(column(c.name, c.type) for c in generation.c if c.name != "entry_id"),
        )
        .render_derived(name="incoming", with_types=True)
    )
    write = postgresql.insert(generation).from_select(
        [generation.c.entry_id, *(generation.c[c.name] for c in incoming.c)],
        select(upserted.c.id, *incoming.c).select_from(upserted).join(incoming, sql_true()),
    )
    written = write.on_conflict_do_update(
        index_elements=[generation.c.entry_id, generation.c.idx],
        set_={name: write.excluded[name] for name in GENERATION_VALUE_COLUMNS},
    ).cte("written")
    return (
        delete(generation)
        .where(
            generation.c.entry_id == upserted.c.id,
            generation.c.idx >= upserted.c.generation_count,
        )
        .add_cte(upserted)
        .add_cte(written)
    )


def _unique_statement_name() -> str:
    return f"__asyncpg_{uuid.uuid4()}__"


BACKEND = Postgres()
