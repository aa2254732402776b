"""Every SQL statement of the cache, built once per dialect and run by sync and async alike.

The operations at the bottom take a plain ``Connection``: sync methods call them directly and
async methods through ``AsyncConnection.run_sync``, which drives the same code on the async
driver without a thread, so each operation exists exactly once.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from typing import cast as cast_type

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    Delete,
    Insert,
    Integer,
    Row,
    Select,
    Update,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import PoolProxiedConnection

from langchain_sqlcache.backends import backend_for
from langchain_sqlcache.backends.base import ReaderMode
from langchain_sqlcache.engines import EnginePair
from langchain_sqlcache.errors import ValueTooLargeError
from langchain_sqlcache.failsafe import CONNECTING, opened
from langchain_sqlcache.models import entry_table, generation_table
from langchain_sqlcache.sqlalchemy_internals import (
    as_sqlalchemy_error,
    await_only,
    compile_for_driver,
)

entry = entry_table
generation = generation_table

# Columns an update rewrites when the key already exists (created_at and hits stay).
REWRITTEN_ON_UPDATE = (
    "namespace",
    "updated_at",
    "expires_at",
    "llm_model",
    "generation_count",
    "size_bytes",
)


@dataclass(frozen=True)
class Statements:
    """The statements of one dialect."""

    dialect_name: str
    upsert_returns_lastrowid: bool
    lookup: Select[Any]
    upsert_entry: Insert
    delete_generations: Delete
    insert_generations: Insert
    delete_entry_generations: Delete
    delete_entry: Delete
    delete_generations_of_ids: Delete
    delete_entries_of_ids: Delete
    expired_ids: Select[Any]
    oldest_entries: Select[Any]
    namespace_totals: Select[Any]
    record_hits: Update
    stats_by_model: Select[Any]


@functools.cache
def statements_for(dialect_name: str) -> Statements:
    """Return the statements for a dialect (``postgresql``, ``mysql``, ``mariadb``, ``sqlite``)."""
    key_hash = bindparam("key_hash", type_=entry.c.key_hash.type)
    now = bindparam("now", type_=entry.c.expires_at.type)
    in_namespace = entry.c.namespace == bindparam("namespace", type_=entry.c.namespace.type)
    batch = bindparam("batch", type_=Integer)
    entry_ids: BindParameter[int] = bindparam("ids", expanding=True)
    entry_id_of_key = select(entry.c.id).where(entry.c.key_hash == key_hash).scalar_subquery()
    expired = entry.c.expires_at <= now
    backend = backend_for(dialect_name)
    return Statements(
        dialect_name=dialect_name,
        upsert_returns_lastrowid=not backend.has_returning,
        # One SELECT answers hit and miss alike: no rows is a miss, and so is an expired
        # entry, whether or not pruning has deleted it yet.
        lookup=(
            select(
                generation.c.generation_type,
                generation.c.text,
                # JSON comes back as text and is parsed by the codec, so that a planted
                # malformed document is a miss there rather than an error while fetching,
                # and so that the codec can tell from the text alone that nothing in it
                # needs unescaping. (Postgres drivers parse json unless it is cast.)
                backend.as_text(generation.c.generation_info).label("generation_info"),
                backend.as_text(generation.c.message).label("message"),
            )
            .select_from(entry.join(generation))
            .where(entry.c.key_hash == key_hash)
            # An entry's value is its first generation_count generations (see replace_value).
            .where(generation.c.idx < entry.c.generation_count)
            .where(or_(entry.c.expires_at.is_(None), entry.c.expires_at > now))
            .order_by(generation.c.idx)
        ),
        upsert_entry=backend.upsert_entry(),
        delete_generations=delete(generation).where(generation.c.entry_id == bindparam("entry_id")),
        insert_generations=insert(generation),
        delete_entry_generations=delete(generation).where(generation.c.entry_id == entry_id_of_key),
        delete_entry=delete(entry).where(entry.c.key_hash == key_hash),
        delete_generations_of_ids=delete(generation).where(generation.c.entry_id.in_(entry_ids)),
        delete_entries_of_ids=delete(entry).where(entry.c.id.in_(entry_ids)),
        expired_ids=(
            select(entry.c.id).where(in_namespace, expired).order_by(entry.c.id).limit(batch)
        ),
        # Keyset pagination: each batch starts after the last one, so a prune never walks
        # again over the entries (or the dead index tuples) that its earlier batches deleted.
        oldest_entries=(
            select(entry.c.id, entry.c.size_bytes)
            .where(in_namespace, entry.c.id > bindparam("after_id", type_=Integer))
            .order_by(entry.c.id)
            .limit(batch)
        ),
        namespace_totals=select(func.count(), func.coalesce(func.sum(entry.c.size_bytes), 0)).where(
            in_namespace
        ),
        # One UPDATE per key per flush, however many hits it had: hot keys never queue
        # readers on a row lock.
        record_hits=(
            update(entry)
            .where(entry.c.key_hash == bindparam("hit_key_hash"))
            .values(
                hit_count=entry.c.hit_count + bindparam("hits", type_=Integer),
                last_hit_at=bindparam("hit_at", type_=entry.c.last_hit_at.type),
            )
        ),
        stats_by_model=(
            select(
                entry.c.llm_model,
                func.count().label("entries"),
                _sum(entry.c.generation_count).label("generations"),
                _sum(entry.c.size_bytes).label("bytes"),
                _sum(entry.c.hit_count).label("hits"),
                _sum(case((expired, 1), else_=0)).label("expired"),
            )
            .where(in_namespace)
            .group_by(entry.c.llm_model)
        ),
    )


def _sum(column: ColumnElement[Any]) -> ColumnElement[Any]:
    return func.coalesce(func.sum(column), 0)


# The entry columns an update writes (the rest keep their defaults, or their values).
WRITTEN_ENTRY_COLUMNS = (
    "key_hash",
    *REWRITTEN_ON_UPDATE,
    "prompt",
    "llm_string",
    "created_at",
)
GENERATION_VALUE_COLUMNS = (
    "generation_type",
    "text",
    "generation_info",
    "message",
    "input_tokens",
    "output_tokens",
)


@dataclass(frozen=True)
class EntryFilter:
    """Which entries clear() and export touch, as conditions on bind parameters.

    ``namespace`` (the entry's namespace), ``llm_string``, ``cutoff`` (last written before
    it) and ``now`` (expired by then); a filter without a parameter does not restrict.
    """

    namespace: bool
    llm_string: bool
    older_than: bool
    expired_only: bool

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> EntryFilter:
        """The filter whose bind parameters ``params`` supplies."""
        return cls(
            namespace="namespace" in params,
            llm_string="llm_string" in params,
            older_than="cutoff" in params,
            expired_only="now" in params,
        )

    def conditions(self) -> list[ColumnElement[bool]]:
        """The WHERE clauses (none: every entry)."""
        found: list[ColumnElement[bool]] = []
        if self.namespace:
            found.append(entry.c.namespace == bindparam("namespace", type_=entry.c.namespace.type))
        if self.llm_string:
            found.append(entry.c.llm_string == bindparam("llm_string"))
        if self.older_than:
            found.append(entry.c.updated_at < bindparam("cutoff", type_=entry.c.updated_at.type))
        if self.expired_only:
            found.append(entry.c.expires_at <= bindparam("now", type_=entry.c.expires_at.type))
        return found


@functools.cache
def matching_ids(which: EntryFilter) -> Select[Any]:
    """A batch of the ids of the entries that match, oldest first (any dialect)."""
    return (
        select(entry.c.id)
        .where(*which.conditions())
        .order_by(entry.c.id)
        .limit(bindparam("batch", type_=Integer))
    )


@functools.cache
def matching_page(which: EntryFilter) -> Select[Any]:
    """The next page (keyset: ids after ``after_id``) of the entries that match."""
    return (
        select(entry)
        .where(entry.c.id > bindparam("after_id", type_=Integer), *which.conditions())
        .order_by(entry.c.id)
        .limit(bindparam("batch", type_=Integer))
    )


@functools.cache
def matching_count(which: EntryFilter) -> Select[Any]:
    """How many entries match."""
    return select(func.count()).select_from(entry).where(*which.conditions())


# -- operations: each takes a Connection and runs inside the caller's transaction ---------


@dataclass(frozen=True)
class DriverQuery:
    """Statements compiled once for one dialect and schema, ready for the DBAPI cursor.

    The hot paths skip SQLAlchemy's execution path (a Connection, an execution context and
    a result per call, which cost a lookup about a third of a loopback round trip): the
    statements are still built and compiled by SQLAlchemy, once, and their bind processors
    still convert the parameters. Several statements are sent as one
    packet, where the connection allows it (MySQL with multi-statements).
    """

    sql: str
    positions: tuple[str, ...] | None
    """Parameter names in order for positional paramstyles; None for named ones."""
    processors: tuple[tuple[str, Callable[[Any], Any]], ...]
    results: int = 1
    """How many results the server sends back (one per statement)."""
    constants: tuple[tuple[str, Any], ...] = ()
    """The statements' own bound values (a literal such as coalesce(..., 0))."""
    one_by_one: tuple[tuple[str, int], ...] = ()
    """Each statement and its number of parameters, for a driver that takes one statement
    per call (SQLite); empty when ``sql`` is sent whole."""

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
    """Compile the statements of ``name`` (a :class:`Statements` field) for a dialect and schema.

    MySQL's and SQLite's ``replace_value`` depend on the number of generations they write
    (one multi-row INSERT).
    """
    backend = backend_for(dialect)
    statements = (
        backend.whole_value_write(generations)
        if name == "whole_value_write"
        else (getattr(statements_for(dialect.name), name),)
    )
    sql: list[str] = []
    positions: list[str] = []
    counts: list[int] = []
    processors: dict[str, Callable[[Any], Any]] = {}
    constants: dict[str, Any] = {}
    for statement in statements:
        compiled = compile_for_driver(statement, dialect, schema)
        sql.append(compiled.sql)
        positions += compiled.positions
        counts.append(len(compiled.positions))
        processors.update(compiled.processors)
        constants.update(compiled.constants)
    return DriverQuery(
        ";\n".join(sql),
        tuple(positions) if positions else None,
        tuple(processors.items()),
        results=len(statements),
        constants=tuple(constants.items()),
        one_by_one=(
            tuple(zip(sql, counts, strict=True))
            if backend.statements_one_per_call and len(sql) > 1
            else ()
        ),
    )


def insert_generations(generations: int, entry_id: ColumnElement[Any]) -> Insert:
    """One multi-row INSERT of ``generations`` rows (binds ``idx_0``, ``text_0``, ...)."""
    return insert(generation).values(
        [
            {
                "entry_id": entry_id,
                **{
                    name: bindparam(f"{name}_{i}", type_=generation.c[name].type)
                    for name in ("idx", *GENERATION_VALUE_COLUMNS)
                },
            }
            for i in range(generations)
        ]
    )


def entry_binds() -> dict[str, BindParameter[Any]]:
    """The entry columns an update writes, each as a bind parameter of its name."""
    return {name: bindparam(name, type_=entry.c[name].type) for name in WRITTEN_ENTRY_COLUMNS}


def run_on_reader(
    engine: Engine,
    query: DriverQuery,
    values: dict[str, Any],
    mode: ReaderMode,
    before: Callable[[PoolProxiedConnection], None] | None = None,
) -> list[tuple[Any, ...]]:
    """Run ``query`` as its own transaction on a pooled DBAPI connection; return its rows.

    The pool still checks the connection out and in (its events, pings and limits apply);
    a DBAPI error is raised as SQLAlchemy's, after the connection is invalidated if the
    error says it is gone (or rolled back if not), as a Connection would do. ``before``
    runs first, on the checked-out connection.
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
        if before is not None:
            before(connection)
        if mode == "switch":
            dialect.set_isolation_level(dbapi_connection, "AUTOCOMMIT")
        rows = fetch_on(connection, query, parameters)
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
    connection: PoolProxiedConnection, query: DriverQuery, parameters: Any
) -> list[tuple[Any, ...]]:
    """Run ``query`` on a checked-out connection; return the rows of its first statement."""
    if query.one_by_one:
        first: list[tuple[Any, ...]] | None = None
        start = 0
        for sql, count in query.one_by_one:
            rows = _fetch_one(connection, sql, parameters[start : start + count])
            first = rows if first is None else first
            start += count
        return first or []
    if query.results == 1:
        return _fetch_one(connection, query.sql, parameters)
    # Several statements in one packet (MySQL's multi-statements), one result each.
    cursor = connection.cursor()
    cursor.execute(query.sql, parameters)
    rows = list(cursor.fetchall()) if cursor.description else []
    for _ in range(query.results - 1):  # an error in a later statement surfaces here
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
    return run_on_reader(engines.reader, query, values, engines.reader_mode)


def store_value(
    engines: EnginePair[Engine], entry_row: dict[str, Any], generation_rows: list[dict[str, Any]]
) -> None:
    """Replace an entry's whole value in one round trip where the backend allows it.

    Postgres: one statement in autocommit. MySQL, on the cache's own engines: one packet of
    statements, a transaction from START TRANSACTION to COMMIT. SQLite: the same transaction
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

        def check(connection: PoolProxiedConnection) -> None:
            backend.check_value_size(connection, entry_row, generation_rows, one_packet=True)

        run_on_reader(
            engines.reader,
            query,
            values,
            engines.reader_mode,
            check if backend.packet_limited else None,
        )
        return
    with opened(engines.writer) as connection, connection.begin():
        write_value(connection, entry_row, generation_rows)


def write_value(
    connection: Connection, entry_row: dict[str, Any], generation_rows: list[dict[str, Any]]
) -> None:
    """Replace an entry's whole value: upsert the entry, then swap its generations.

    An empty value deletes the entry instead.
    """
    statements = statements_for(connection.dialect.name)
    if not generation_rows:
        delete_value(connection, entry_row["key_hash"])
        return
    backend = backend_for(connection.dialect)
    if backend.packet_limited:  # one packet per statement
        backend.check_value_size(
            connection.connection, entry_row, generation_rows, one_packet=False
        )
    result = connection.execute(statements.upsert_entry, entry_row)
    entry_id = result.lastrowid if statements.upsert_returns_lastrowid else result.scalar_one()
    connection.execute(statements.delete_generations, {"entry_id": entry_id})
    connection.execute(
        statements.insert_generations,
        [{**row, "entry_id": entry_id} for row in generation_rows],
    )


def delete_value(connection: Connection, key_hash: str) -> int:
    """Delete one entry and its generations (without relying on ON DELETE CASCADE)."""
    statements = statements_for(connection.dialect.name)
    connection.execute(statements.delete_entry_generations, {"key_hash": key_hash})
    return connection.execute(statements.delete_entry, {"key_hash": key_hash}).rowcount


def delete_entries(connection: Connection, entry_ids: Sequence[int]) -> int:
    """Delete a batch of entries and their generations; return how many entries went."""
    if not entry_ids:
        return 0
    statements = statements_for(connection.dialect.name)
    ids = {"ids": list(entry_ids)}
    connection.execute(statements.delete_generations_of_ids, ids)
    return connection.execute(statements.delete_entries_of_ids, ids).rowcount


def clear_batch(connection: Connection, namespace: str, filters: dict[str, Any], batch: int) -> int:
    """Delete one batch of the namespace's entries that match ``filters``."""
    params = {"namespace": namespace, "batch": batch, **filters}
    ids = connection.execute(matching_ids(EntryFilter.of(params)), params).scalars().all()
    return delete_entries(connection, ids)


@dataclass(frozen=True)
class Excess:
    """What a namespace holds beyond its caps, counted once and carried across batches.

    Counting is a scan of the namespace; recounting before every batch made pruning a large
    excess quadratic (990,000 entries: 728 s on MariaDB, against 52 s for clear).
    """

    entries: int
    bytes: int
    after_id: int = 0
    """The last entry id a batch looked at: the next batch starts after it."""

    def __bool__(self) -> bool:
        return self.entries > 0 or self.bytes > 0


def delete_expired_batch(connection: Connection, namespace: str, now: datetime, batch: int) -> int:
    """Delete one batch of the namespace's expired entries; return how many went."""
    statements = statements_for(connection.dialect.name)
    params = {"namespace": namespace, "now": now, "batch": batch}
    expired = connection.execute(statements.expired_ids, params).scalars().all()
    return delete_entries(connection, expired)


def measure_excess(
    connection: Connection, namespace: str, max_entries: int | None, max_bytes: int | None
) -> Excess:
    """Count the namespace once: how many entries and bytes are over the caps."""
    if max_entries is None and max_bytes is None:
        return Excess(0, 0)
    statements = statements_for(connection.dialect.name)
    entries, size = connection.execute(statements.namespace_totals, {"namespace": namespace}).one()
    return Excess(
        entries=max(0, entries - max_entries) if max_entries is not None else 0,
        bytes=max(0, int(size) - max_bytes) if max_bytes is not None else 0,
    )


def delete_oldest_batch(
    connection: Connection, namespace: str, excess: Excess, batch: int
) -> tuple[int, Excess]:
    """Delete the oldest entries of one batch that the excess covers.

    Returns how many went and the excess left (the caller's is not changed, so a batch that
    is retried after a transient failure starts from the same place).
    """
    statements = statements_for(connection.dialect.name)
    params = {"namespace": namespace, "after_id": excess.after_id, "batch": batch}
    entries, size, after_id = excess.entries, excess.bytes, excess.after_id
    doomed: list[int] = []
    # FIFO, as Solid Cache argues: the oldest entries (by first write) go first.
    for entry_id, entry_size in connection.execute(statements.oldest_entries, params):
        if entries <= 0 and size <= 0:
            break
        doomed.append(entry_id)
        entries, size, after_id = entries - 1, size - entry_size, entry_id
    if not doomed:  # the namespace shrank meanwhile: nothing left to evict
        return 0, Excess(0, 0, after_id)
    return delete_entries(connection, doomed), Excess(max(0, entries), max(0, size), after_id)


def prune_step(
    connection: Connection,
    namespace: str,
    now: datetime,
    max_entries: int | None,
    max_bytes: int | None,
    batch: int,
) -> int:
    """One bounded batch, as automatic pruning runs it: expired entries, else the oldest."""
    expired = delete_expired_batch(connection, namespace, now, batch)
    if expired:
        return expired
    excess = measure_excess(connection, namespace, max_entries, max_bytes)
    return delete_oldest_batch(connection, namespace, excess, batch)[0] if excess else 0


def record_hits(connection: Connection, hits: list[dict[str, Any]]) -> None:
    """Add buffered hits to their entries (one executemany)."""
    if hits:
        connection.execute(statements_for(connection.dialect.name).record_hits, hits)


def stats_rows(connection: Connection, namespace: str, now: datetime) -> Sequence[Row[Any]]:
    """Per-model counts of a namespace, in one aggregate query."""
    statements = statements_for(connection.dialect.name)
    return connection.execute(statements.stats_by_model, {"namespace": namespace, "now": now}).all()


# -- bulk transfer (export and import) ------------------------------------------------------


@dataclass(frozen=True)
class TransferStatements:
    """Statements for moving many entries: keyset pages out, batched upserts in."""

    generations_of_ids: Select[Any]
    upsert_entries: Insert
    ids_of_keys: Select[Any]


@functools.cache
def transfer_statements(dialect_name: str) -> TransferStatements:
    """Return the transfer statements of a dialect."""
    backend = backend_for(dialect_name)
    return TransferStatements(
        generations_of_ids=(
            select(generation)
            .join(entry, entry.c.id == generation.c.entry_id)
            .where(generation.c.entry_id.in_(bindparam("ids", expanding=True)))
            .where(generation.c.idx < entry.c.generation_count)  # the value, as lookups read it
            .order_by(generation.c.entry_id, generation.c.idx)
        ),
        # Postgres and SQLite hand the ids back from the batched upsert itself; MySQL has no
        # RETURNING, so there the ids are looked up by key afterwards.
        upsert_entries=(
            backend.upsert_entry(returning=False).returning(
                entry.c.id, entry.c.key_hash, sort_by_parameter_order=True
            )
            if backend.has_returning
            else backend.upsert_entry(returning=False)
        ),
        ids_of_keys=select(entry.c.id, entry.c.key_hash).where(
            entry.c.key_hash.in_(bindparam("keys", expanding=True))
        ),
    )


def read_page(
    connection: Connection, filters: Mapping[str, Any], after_id: int, batch: int
) -> tuple[list[Row[Any]], dict[int, list[Row[Any]]]]:
    """One page of the entries after ``after_id`` that match, with their generations by id.

    ``filters`` holds EntryFilter's bind parameters (none: every entry).
    """
    params = {**filters, "after_id": after_id, "batch": batch}
    entries = connection.execute(matching_page(EntryFilter.of(filters)), params).all()
    generations: dict[int, list[Row[Any]]] = {}
    if entries:
        statements = transfer_statements(connection.dialect.name)
        ids = {"ids": [row.id for row in entries]}
        for row in connection.execute(statements.generations_of_ids, ids):
            generations.setdefault(row.entry_id, []).append(row)
    return list(entries), generations


def count_entries(connection: Connection, filters: Mapping[str, Any]) -> int:
    """How many entries match ``filters`` (EntryFilter's bind parameters)."""
    return int(connection.execute(matching_count(EntryFilter.of(filters)), filters).scalar_one())


def write_values(
    connection: Connection, values: list[tuple[dict[str, Any], list[dict[str, Any]]]]
) -> None:
    """Write many (entry row, generation rows) values in four statements."""
    if not values:
        return
    statements = transfer_statements(connection.dialect.name)
    upserted = connection.execute(statements.upsert_entries, [entry_row for entry_row, _ in values])
    if upserted.returns_rows:
        ids = {key: entry_id for entry_id, key in upserted}
    else:
        keys = [entry_row["key_hash"] for entry_row, _ in values]
        ids = {key: entry_id for entry_id, key in connection.execute(
            statements.ids_of_keys, {"keys": keys}
        )}  # fmt: skip
    connection.execute(
        statements_for(connection.dialect.name).delete_generations_of_ids,
        {"ids": list(ids.values())},
    )
    generation_rows = [
        {**row, "entry_id": ids[entry_row["key_hash"]]}
        for entry_row, rows in values
        for row in rows
    ]
    if generation_rows:
        connection.execute(statements_for(connection.dialect.name).insert_generations,
                           generation_rows)  # fmt: skip
