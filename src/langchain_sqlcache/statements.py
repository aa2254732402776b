"""Every SQL statement of the cache, built once per dialect and run by sync and async alike.

The operations at the bottom take a plain ``Connection``: sync methods call them directly and
async methods through ``AsyncConnection.run_sync``, which drives the same code on the async
driver without a thread, so each operation exists exactly once.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Delete,
    Insert,
    Row,
    Select,
    Text,
    bindparam,
    delete,
    func,
    insert,
    select,
    type_coerce,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite

from langchain_sqlcache.models import entry_table, generation_table

entry = entry_table
generation = generation_table


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
    clear_generations: Delete
    clear_entries: Delete


@functools.cache
def statements_for(dialect_name: str) -> Statements:
    """Return the statements for a dialect (``postgresql``, ``mysql``, ``mariadb``, ``sqlite``)."""
    key_hash = bindparam("key_hash", type_=entry.c.key_hash.type)
    namespace = bindparam("namespace", type_=entry.c.namespace.type)
    entry_id_of_key = select(entry.c.id).where(entry.c.key_hash == key_hash).scalar_subquery()
    entry_ids_of_namespace = select(entry.c.id).where(entry.c.namespace == namespace)
    return Statements(
        dialect_name=dialect_name,
        upsert_returns_lastrowid=dialect_name in ("mysql", "mariadb"),
        # One SELECT answers hit and miss alike: no rows is a miss.
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
            .order_by(generation.c.idx)
        ),
        upsert_entry=_upsert_entry(dialect_name),
        delete_generations=delete(generation).where(generation.c.entry_id == bindparam("entry_id")),
        insert_generations=insert(generation),
        delete_entry_generations=delete(generation).where(generation.c.entry_id == entry_id_of_key),
        delete_entry=delete(entry).where(entry.c.key_hash == key_hash),
        clear_generations=delete(generation).where(
            generation.c.entry_id.in_(entry_ids_of_namespace)
        ),
        clear_entries=delete(entry).where(entry.c.namespace == namespace),
    )


def _upsert_entry(dialect_name: str) -> Insert:
    """INSERT the entry row, or lock the existing one, and yield its id.

    The conflicting row is updated (to the same values) rather than skipped so that the
    statement takes its row lock: concurrent writers of one key queue up behind it, and each
    replaces the generations whole.
    """
    if dialect_name in ("mysql", "mariadb"):
        mysql_insert = mysql.insert(entry)
        # LAST_INSERT_ID(id) makes the driver's lastrowid the existing row's id.
        return mysql_insert.on_duplicate_key_update(id=func.last_insert_id(entry.c.id))
    dialect_insert = postgresql.insert if dialect_name == "postgresql" else sqlite.insert
    upsert = dialect_insert(entry)
    return upsert.on_conflict_do_update(
        index_elements=[entry.c.key_hash],
        set_={"namespace": upsert.excluded.namespace},
    ).returning(entry.c.id)


def lookup_rows(connection: Connection, key_hash: str) -> Sequence[Row[Any]]:
    """Return the generation rows of an entry, in order; none on a miss."""
    statements = statements_for(connection.dialect.name)
    return connection.execute(statements.lookup, {"key_hash": key_hash}).all()


def write_value(
    connection: Connection, entry_row: dict[str, Any], generation_rows: list[dict[str, Any]]
) -> None:
    """Replace an entry's whole value: upsert the entry, then swap its generations.

    Runs inside the caller's transaction; an empty value deletes the entry instead.
    """
    statements = statements_for(connection.dialect.name)
    if not generation_rows:
        delete_value(connection, entry_row["key_hash"])
        return
    result = connection.execute(statements.upsert_entry, entry_row)
    entry_id = result.lastrowid if statements.upsert_returns_lastrowid else result.scalar_one()
    connection.execute(statements.delete_generations, {"entry_id": entry_id})
    connection.execute(
        statements.insert_generations,
        [{**row, "entry_id": entry_id} for row in generation_rows],
    )


def delete_value(connection: Connection, key_hash: str) -> None:
    """Delete one entry and its generations (without relying on ON DELETE CASCADE)."""
    statements = statements_for(connection.dialect.name)
    connection.execute(statements.delete_entry_generations, {"key_hash": key_hash})
    connection.execute(statements.delete_entry, {"key_hash": key_hash})


def clear_namespace(connection: Connection, namespace: str) -> None:
    """Delete every entry of a namespace and their generations."""
    statements = statements_for(connection.dialect.name)
    connection.execute(statements.clear_generations, {"namespace": namespace})
    connection.execute(statements.clear_entries, {"namespace": namespace})
