"""Every SQL statement of the cache, built once per dialect and run by sync and async alike.

The operations at the bottom take a plain ``Connection``: sync methods call them directly and
async methods through ``AsyncConnection.run_sync``, which drives the same code on the async
driver without a thread, so each operation exists exactly once.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    Delete,
    Insert,
    Integer,
    Row,
    Select,
    Text,
    Update,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite

from langchain_sqlcache.codec import utf8_size
from langchain_sqlcache.errors import ValueTooLargeError
from langchain_sqlcache.models import entry_table, generation_table

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
    return Statements(
        dialect_name=dialect_name,
        upsert_returns_lastrowid=dialect_name in ("mysql", "mariadb"),
        # One SELECT answers hit and miss alike: no rows is a miss, and so is an expired
        # entry, whether or not pruning has deleted it yet.
        lookup=(
            select(
                generation.c.generation_type,
                generation.c.text,
                # JSON comes back as text and is parsed by the codec, so that a planted
                # malformed document is a miss there rather than an error while fetching.
                type_coerce(generation.c.generation_info, Text).label("generation_info"),
                type_coerce(generation.c.message, Text).label("message"),
            )
            .select_from(entry.join(generation))
            .where(entry.c.key_hash == key_hash)
            .where(or_(entry.c.expires_at.is_(None), entry.c.expires_at > now))
            .order_by(generation.c.idx)
        ),
        upsert_entry=_upsert_entry(dialect_name),
        delete_generations=delete(generation).where(generation.c.entry_id == bindparam("entry_id")),
        insert_generations=insert(generation),
        delete_entry_generations=delete(generation).where(generation.c.entry_id == entry_id_of_key),
        delete_entry=delete(entry).where(entry.c.key_hash == key_hash),
        delete_generations_of_ids=delete(generation).where(generation.c.entry_id.in_(entry_ids)),
        delete_entries_of_ids=delete(entry).where(entry.c.id.in_(entry_ids)),
        expired_ids=(
            select(entry.c.id).where(in_namespace, expired).order_by(entry.c.id).limit(batch)
        ),
        oldest_entries=(
            select(entry.c.id, entry.c.size_bytes)
            .where(in_namespace)
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


def _upsert_entry(dialect_name: str, *, returning: bool = True) -> Insert:
    """INSERT the entry row, or lock and rewrite the existing one, and yield its id.

    The conflicting row is updated rather than skipped so that the statement takes its row
    lock: concurrent writers of one key queue up behind it, and each replaces the
    generations whole.
    """
    if dialect_name in ("mysql", "mariadb"):
        mysql_insert = mysql.insert(entry)
        # LAST_INSERT_ID(id) makes the driver's lastrowid the existing row's id.
        return mysql_insert.on_duplicate_key_update(
            id=func.last_insert_id(entry.c.id),
            **{name: mysql_insert.inserted[name] for name in REWRITTEN_ON_UPDATE},
        )
    dialect_insert = postgresql.insert if dialect_name == "postgresql" else sqlite.insert
    upsert = dialect_insert(entry)
    statement = upsert.on_conflict_do_update(
        index_elements=[entry.c.key_hash],
        set_={name: upsert.excluded[name] for name in REWRITTEN_ON_UPDATE},
    )
    return statement.returning(entry.c.id) if returning else statement


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


def lookup_rows(connection: Connection, key_hash: str, now: datetime) -> Sequence[Row[Any]]:
    """Return the generation rows of a live entry, in order; none on a miss."""
    statements = statements_for(connection.dialect.name)
    return connection.execute(statements.lookup, {"key_hash": key_hash, "now": now}).all()


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
    if statements.upsert_returns_lastrowid:  # MySQL and MariaDB: one packet per statement
        check_packet_size(connection, entry_row, generation_rows)
    result = connection.execute(statements.upsert_entry, entry_row)
    entry_id = result.lastrowid if statements.upsert_returns_lastrowid else result.scalar_one()
    connection.execute(statements.delete_generations, {"entry_id": entry_id})
    connection.execute(
        statements.insert_generations,
        [{**row, "entry_id": entry_id} for row in generation_rows],
    )


# Bytes a MySQL statement adds around its values, with room to spare.
PACKET_OVERHEAD = 4096
# Characters PyMySQL and aiomysql escape with a backslash when they inline a string.
ESCAPED_CHARACTERS = "\\'\"\x00\n\r\x1a"


def check_packet_size(
    connection: Connection, entry_row: dict[str, Any], generation_rows: list[dict[str, Any]]
) -> None:
    """Refuse, before sending, a row larger than the server's max_allowed_packet.

    Sent anyway, the server would drop the connection mid-statement. The limit is read once
    per pooled connection.
    """
    info = connection.connection.info
    if "max_allowed_packet" not in info:
        limit = connection.exec_driver_sql("SELECT @@max_allowed_packet").scalar_one()
        info["max_allowed_packet"] = int(limit)
    limit = info["max_allowed_packet"]
    largest = max(
        _wire_size(entry_row["prompt"]) + _wire_size(entry_row["llm_string"]),
        *(
            _wire_size(row["text"])
            + _wire_size(json.dumps(row["generation_info"]))
            + _wire_size(json.dumps(row["message"]))
            for row in generation_rows
        ),
    )
    if largest + PACKET_OVERHEAD > limit:
        msg = (
            f"a row of about {largest:,} bytes exceeds the server's max_allowed_packet "
            f"({limit:,} bytes); not sent"
        )
        raise ValueTooLargeError(msg)


def _wire_size(value: str) -> int:
    return utf8_size(value) + sum(value.count(c) for c in ESCAPED_CHARACTERS)


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


def prune_batch(
    connection: Connection,
    namespace: str,
    now: datetime,
    max_entries: int | None,
    max_bytes: int | None,
    batch: int,
) -> int:
    """Delete one bounded batch: expired entries first, then the oldest over the caps."""
    statements = statements_for(connection.dialect.name)
    params = {"namespace": namespace, "now": now, "batch": batch}
    expired = connection.execute(statements.expired_ids, params).scalars().all()
    if expired:
        return delete_entries(connection, expired)
    if max_entries is None and max_bytes is None:
        return 0
    entries, size = connection.execute(statements.namespace_totals, params).one()
    excess_entries = max(0, entries - max_entries) if max_entries is not None else 0
    excess_bytes = max(0, size - max_bytes) if max_bytes is not None else 0
    if not excess_entries and not excess_bytes:
        return 0
    doomed: list[int] = []
    # FIFO, as Solid Cache argues: the oldest entries (by first write) go first.
    for entry_id, entry_size in connection.execute(statements.oldest_entries, params):
        if len(doomed) >= excess_entries and excess_bytes <= 0:
            break
        doomed.append(entry_id)
        excess_bytes -= entry_size
    return delete_entries(connection, doomed)


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
    return TransferStatements(
        generations_of_ids=(
            select(generation)
            .where(generation.c.entry_id.in_(bindparam("ids", expanding=True)))
            .order_by(generation.c.entry_id, generation.c.idx)
        ),
        # Postgres and SQLite hand the ids back from the batched upsert itself; MySQL has no
        # RETURNING, so there the ids are looked up by key afterwards.
        upsert_entries=(
            _upsert_entry(dialect_name, returning=False)
            if dialect_name in ("mysql", "mariadb")
            else _upsert_entry(dialect_name, returning=False).returning(
                entry.c.id, entry.c.key_hash, sort_by_parameter_order=True
            )
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
