"""Clearing and pruning: deleting entries in bounded batches, and the eviction policy.

What triggers them (every ``prune_every`` updates, ``prune()``, ``clear()``) is the cache's;
which entries go is decided here: expired ones first, then the oldest (FIFO) over the caps.
Each function runs one batch inside the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    Connection,
)

from langchain_sqlcache.models import entry_table, generation_table
from langchain_sqlcache.settings import EntryFilter
from langchain_sqlcache.statements import FilterShape, matching_ids, statements_for

entry = entry_table
generation = generation_table


def delete_entries(connection: Connection, entry_ids: Sequence[int]) -> int:
    """Delete a batch of entries and their generations; return how many entries went."""
    if not entry_ids:
        return 0
    statements = statements_for(connection.dialect.name)
    ids = {"ids": list(entry_ids)}
    connection.execute(statements.delete_generations_of_ids, ids)
    return connection.execute(statements.delete_entries_of_ids, ids).rowcount


def clear_batch(connection: Connection, which: EntryFilter, batch: int) -> int:
    """Delete one batch of the entries that ``which`` selects."""
    params = which.params()
    shape = FilterShape.of(params)
    ids = connection.execute(matching_ids(shape), {**params, "batch": batch}).scalars().all()
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
