"""The hot path: a lookup or an update as statements sent straight to a pooled DBAPI connection.

SQLAlchemy builds and compiles the statements, once (see :class:`DriverQuery`); each call
then skips its execution path (a Connection, an execution context and a result per call) and
hands the compiled SQL and the processed parameters to the driver's cursor, as one call per
operation where the backend allows it. Sync methods run these functions directly; async ones
in SQLAlchemy's greenlet, on the async engine's sync facade, so each exists once.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from typing import cast as cast_type

from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import PoolProxiedConnection

from langchain_sqlcache.backends import backend_for
from langchain_sqlcache.backends.base import ReaderMode
from langchain_sqlcache.engines import EnginePair
from langchain_sqlcache.entries import write_value
from langchain_sqlcache.errors import ValueTooLargeError
from langchain_sqlcache.failsafe import CONNECTING, opened
from langchain_sqlcache.models import entry_table, generation_table
from langchain_sqlcache.sqlalchemy_internals import (
    as_sqlalchemy_error,
    await_only,
    compile_for_driver,
)
from langchain_sqlcache.statements import statements_for

entry = entry_table
generation = generation_table


@dataclass(frozen=True)
class DriverQuery:
    """Statements compiled once for one dialect and schema, ready for the DBAPI cursor.

    The hot paths skip SQLAlchemy's execution path (a Connection, an execution context and
    a result per call, which cost a lookup about a third of a loopback round trip): the
    statements are still built and compiled by SQLAlchemy, once, and their bind processors
    still convert the parameters. Several statements are sent as one
    packet where that is safe (MySQL with multi-statements, not on Galera), else as
    ``steps``.
    """

    sql: str
    positions: tuple[str, ...] | None
    """Parameter names in order for positional paramstyles; None for named ones."""
    processors: tuple[tuple[str, Callable[[Any], Any]], ...]
    results: int = 1
    """How many results the server sends back (one per statement)."""
    constants: tuple[tuple[str, Any], ...] = ()
    """The statements' own bound values (a literal such as coalesce(..., 0))."""
    steps: tuple[tuple[str, int, int], ...] = ()
    """The statements as several calls: each call's SQL, its number of parameters and of
    results. Used where the driver takes one statement per call (SQLite: a statement a
    call) or where one call is not atomic (a Galera node: see
    ``Backend.whole_value_steps``); empty when there is only one call."""
    whole: bool = True
    """``sql`` may be sent as one call (not where the driver takes one statement a call)."""

    def parameters(self, values: dict[str, Any]) -> Sequence[Any] | dict[str, Any]:
        """The DBAPI parameters for ``values``."""
        values.update(self.constants)
        for name, process in self.processors:
            values[name] = process(values[name])
        if self.positions is None:
            return values
        return tuple(values[name] for name in self.positions)


@functools.lru_cache(maxsize=256)
def driver_query(
    name: str, dialect: Dialect, schema: str | None, generations: int = 0
) -> DriverQuery:
    """Compile the statements of ``name`` for a dialect and schema.

    ``name`` is a :class:`~langchain_sqlcache.statements.Statements` field, or
    ``whole_value_write``: the backend's update, whose MySQL and SQLite forms depend on the
    number of generations they write (one multi-row INSERT).
    """
    backend = backend_for(dialect)
    calls: tuple[tuple[Any, ...], ...]
    if name != "whole_value_write":
        calls = ((getattr(statements_for(dialect.name), name),),)
    elif backend.statements_one_per_call:
        calls = tuple((statement,) for statement in backend.whole_value_write(generations))
    else:
        calls = backend.whole_value_steps(generations)
    sql: list[str] = []
    positions: list[str] = []
    steps: list[tuple[str, int, int]] = []
    processors: dict[str, Callable[[Any], Any]] = {}
    constants: dict[str, Any] = {}
    for call in calls:
        call_sql: list[str] = []
        call_positions = len(positions)
        for statement in call:
            compiled = compile_for_driver(statement, dialect, schema)
            call_sql.append(compiled.sql)
            positions += compiled.positions
            processors.update(compiled.processors)
            constants.update(compiled.constants)
        sql += call_sql
        steps.append((";\n".join(call_sql), len(positions) - call_positions, len(call)))
    return DriverQuery(
        ";\n".join(sql),
        tuple(positions) if positions else None,
        tuple(processors.items()),
        results=len(sql),
        constants=tuple(constants.items()),
        steps=tuple(steps) if len(steps) > 1 else (),
        whole=not backend.statements_one_per_call,
    )


def run_direct(
    engine: Engine,
    query: DriverQuery,
    values: dict[str, Any],
    mode: ReaderMode,
    before: Callable[[PoolProxiedConnection], bool] | None = None,
) -> list[tuple[Any, ...]]:
    """Run ``query`` as its own transaction on a pooled DBAPI connection; return its rows.

    The pool still checks the connection out and in (its events, pings and limits apply);
    a DBAPI error is raised as SQLAlchemy's, after the connection is invalidated if the
    error says it is gone (or rolled back if not), as a Connection would do. ``before``
    runs first, on the checked-out connection, and says whether the query goes in steps
    (see DriverQuery.steps).
    """
    dialect = engine.dialect
    parameters = query.parameters(values)
    with CONNECTING:
        try:
            connection = engine.raw_connection()
        except dialect.loaded_dbapi.Error as exc:  # refused, or the server is starting up
            gone = dialect.is_disconnect(exc, None, None)
            raise as_sqlalchemy_error(exc, dialect, None, None, invalidated=gone) from exc
    dbapi_connection = connection.dbapi_connection
    assert dbapi_connection is not None  # noqa: S101 - a checked-out connection has one
    try:
        stepwise = before(connection) if before is not None else False
        if mode == "switch":
            dialect.set_isolation_level(dbapi_connection, "AUTOCOMMIT")
        rows = fetch_on(connection, query, parameters, stepwise=stepwise)
        if mode == "switch":
            dialect.reset_isolation_level(dbapi_connection)
        elif mode == "transaction":
            connection.commit()
        return rows
    except dialect.loaded_dbapi.Error as exc:
        gone = dialect.is_disconnect(exc, dbapi_connection, None) or backend_for(
            dialect
        ).turned_read_only(exc)
        if gone:
            connection.invalidate(exc)
        else:
            _roll_back(connection, exc, mode)
        raise as_sqlalchemy_error(exc, dialect, query.sql, parameters, invalidated=gone) from exc
    except ValueTooLargeError:
        raise  # refused before anything was sent: the connection is as it was
    except Exception as exc:
        if not _raised_by_driver(exc, connection):
            raise  # our own error: not a database failure to retry
        # The driver's own error, not its DBAPI one, so nothing says what state the
        # connection is in: it is closed, not handed out again, and the operation is retried
        # on another. (asyncpg's InternalClientError, "cannot switch to state ...; another
        # operation is in progress", on the first use after a server restart: SQLAlchemy
        # translates it only from 2.0.50.)
        connection.invalidate(exc)
        raise DBAPIError(query.sql, parameters, exc, connection_invalidated=True) from exc
    except BaseException:
        # Cancelled mid-statement (the async path's deadline, cache._within): the
        # connection may still owe an answer, so it is closed, never handed out again.
        connection.invalidate()
        raise
    finally:
        connection.close()


def _raised_by_driver(exc: BaseException, connection: PoolProxiedConnection) -> bool:
    """Whether ``exc`` comes from the connection's driver (asyncpg, ...) or its socket.

    A timeout or a socket error counts: asyncpg's command_timeout raises asyncio's
    TimeoutError, which SQLAlchemy before 2.0.50 passes on unwrapped; the connection is then
    mid-command, and handed out again it would hang the next caller (its rollback).
    """
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, OSError)):
        return True
    driver_package = type(connection.driver_connection).__module__.split(".")[0]
    return type(exc).__module__.split(".")[0] == driver_package


def fetch_on(
    connection: PoolProxiedConnection,
    query: DriverQuery,
    parameters: Any,
    *,
    stepwise: bool = False,
) -> list[tuple[Any, ...]]:
    """Run ``query`` on a checked-out connection; return the rows of its first statement.

    ``stepwise``: as its steps, a call each, even where it could go as one.
    """
    if query.steps and (stepwise or not query.whole):
        first: list[tuple[Any, ...]] | None = None
        start = 0
        named = isinstance(parameters, dict)  # each step takes the names it uses
        for sql, count, results in query.steps:
            step = parameters if named else parameters[start : start + count]
            rows = _fetch(connection, sql, step, results)
            first = rows if first is None else first
            start += count
        return first or []
    return _fetch(connection, query.sql, parameters, query.results)


def _fetch(
    connection: PoolProxiedConnection, sql: str, parameters: Any, results: int
) -> list[tuple[Any, ...]]:
    """Run one call of ``results`` statements; return the rows of its first."""
    if results == 1:
        return _fetch_one(connection, sql, parameters)
    # Several statements in one packet (MySQL's multi-statements), one result each.
    cursor = connection.cursor()
    cursor.execute(sql, parameters)
    rows = list(cursor.fetchall()) if cursor.description else []
    for _ in range(results - 1):  # an error in a later statement surfaces here
        cursor.nextset()
    cursor.close()
    return rows


def _fetch_one(
    connection: PoolProxiedConnection, sql: str, parameters: Any
) -> list[tuple[Any, ...]]:
    """Run one statement; return its rows."""
    driver = connection.driver_connection
    aiosqlite = sys.modules.get("aiosqlite")  # loaded if in use: never imported for this
    if aiosqlite is not None and isinstance(driver, aiosqlite.Connection):
        # aiosqlite runs each call on its own thread: SQLAlchemy's adapted cursor makes four
        # hand-offs (cursor, execute, fetchall, close), execute_fetchall one.
        fetched = driver.execute_fetchall(sql, parameters)
        return list(await_only(cast_type(Awaitable[Iterable[tuple[Any, ...]]], fetched)))
    cursor = connection.cursor()
    cursor.execute(sql, parameters)
    rows = list(cursor.fetchall()) if cursor.description else []
    cursor.close()
    return rows


def _roll_back(connection: PoolProxiedConnection, exc: BaseException, mode: ReaderMode) -> None:
    """End what a failed statement left open (a multi-statement's transaction)."""
    try:
        connection.rollback()
    except Exception:  # noqa: BLE001 - a connection that cannot roll back is dropped
        connection.invalidate(exc)
        return
    if mode == "switch":
        # Never hand an application's pool a connection left in autocommit.
        connection.invalidate(exc, soft=True)


def lookup_rows(engines: EnginePair[Engine], key_hash: str, now: datetime) -> list[tuple[Any, ...]]:
    """A lookup: its one SELECT, straight on a pooled connection of the reader.

    Rows are ``(generation_type, text, generation_info, message)`` of a live entry, in
    order; none on a miss.
    """
    query = driver_query("lookup", engines.reader.dialect, engines.schema)
    values = {"key_hash": key_hash, "now": now}
    return run_direct(engines.reader, query, values, engines.reader_mode)


def store_value(
    engines: EnginePair[Engine], entry_row: dict[str, Any], generation_rows: list[dict[str, Any]]
) -> None:
    """Replace an entry's whole value in one round trip where the backend allows it.

    Postgres: one statement in autocommit. MySQL, on the cache's own engines: one packet of
    statements, a transaction from START TRANSACTION to COMMIT; on a Galera node, where a
    packet is not atomic, the same statements in steps (see the backend's
    ``whole_value_steps``). SQLite: the same transaction
    from BEGIN IMMEDIATE to COMMIT, a statement per call (in-process). An application's
    MySQL engine (no multi-statements): a transaction of three statements through a
    Connection. An empty value deletes the entry.
    """
    backend = backend_for(engines.writer.dialect)
    count = len(generation_rows)
    if count and backend.writes_in_one_call(count, multi_statements=engines.multi_statements):
        # MySQL's and SQLite's multi-row INSERT is compiled per number of generations;
        # Postgres' takes them all as one json parameter.
        by_position = backend.generations_by_position
        query = driver_query(
            "whole_value_write", engines.reader.dialect, engines.schema, count if by_position else 0
        )
        values = dict(entry_row)
        if by_position:
            for i, row in enumerate(generation_rows):
                values.update({f"{name}_{i}": value for name, value in row.items()})
        else:
            values["generation_rows"] = generation_rows

        def prepare(connection: PoolProxiedConnection) -> bool:
            # Measured as one packet in steps too: their INSERT carries every generation.
            backend.check_value_size(connection, entry_row, generation_rows, one_packet=True)
            return not backend.one_call_is_atomic(connection)

        run_direct(
            engines.reader,
            query,
            values,
            engines.reader_mode,
            prepare if backend.packet_limited or (query.steps and query.whole) else None,
        )
        return
    with opened(engines.writer) as connection, connection.begin():
        write_value(connection, entry_row, generation_rows)
