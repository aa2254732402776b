"""One entry at a time through a SQLAlchemy Connection, inside the caller's transaction.

The slower path of an update (an application's MySQL engine, a value of many generations
on SQLite), deleting one entry, hit counts and the per-model stats.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Row,
)

from langchain_sqlcache.backends import backend_for
from langchain_sqlcache.models import entry_table, generation_table
from langchain_sqlcache.statements import statements_for

entry = entry_table
generation = generation_table


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


def record_hits(connection: Connection, hits: list[dict[str, Any]]) -> None:
    """Add buffered hits to their entries (one executemany)."""
    if hits:
        connection.execute(statements_for(connection.dialect.name).record_hits, hits)


def stats_rows(connection: Connection, namespace: str, now: datetime) -> Sequence[Row[Any]]:
    """Per-model counts of a namespace, in one aggregate query."""
    statements = statements_for(connection.dialect.name)
    return connection.execute(statements.stats_by_model, {"namespace": namespace, "now": now}).all()
