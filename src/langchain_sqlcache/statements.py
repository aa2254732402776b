"""Every statement of the cache's tables, built once per dialect: pure, no I/O.

The dialect's own forms (the upsert, the whole-value write) come from its backend
(``backends/``); the runners are ``fastpath`` (lookups and updates, straight on the driver),
``entries`` (one entry through a Connection), ``lifecycle`` (clearing, pruning) and
``transfer`` (export and import). Migrations keep their own DDL, frozen per revision.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Delete,
    Insert,
    Integer,
    Select,
    Table,
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

from langchain_sqlcache.backends import backend_for
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
            # An entry's value is its first generation_count generations (see
            # backends.postgres.replace_value).
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
class FilterShape:
    """Which conditions a filter (settings.EntryFilter) puts on bind parameters.

    ``namespace`` (the entry's namespace), ``llm_string``, ``cutoff`` (last written before
    it) and ``now`` (expired by then); a filter without a parameter does not restrict. One
    statement is built per shape, whatever the values.
    """

    namespace: bool
    llm_string: bool
    older_than: bool
    expired_only: bool

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> FilterShape:
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
def matching_ids(which: FilterShape) -> Select[Any]:
    """A batch of the ids of the entries that match, oldest first (any dialect)."""
    return (
        select(entry.c.id)
        .where(*which.conditions())
        .order_by(entry.c.id)
        .limit(bindparam("batch", type_=Integer))
    )


@functools.cache
def matching_page(which: FilterShape) -> Select[Any]:
    """The next page (keyset: ids after ``after_id``) of the entries that match."""
    return (
        select(entry)
        .where(entry.c.id > bindparam("after_id", type_=Integer), *which.conditions())
        .order_by(entry.c.id)
        .limit(bindparam("batch", type_=Integer))
    )


@functools.cache
def matching_count(which: FilterShape) -> Select[Any]:
    """How many entries match."""
    return select(func.count()).select_from(entry).where(*which.conditions())


def on_conflict_upsert(dialect_insert: Callable[[Table], Any], *, returning: bool) -> Insert:
    """INSERT ... ON CONFLICT (key_hash) DO UPDATE (Postgres, SQLite), RETURNING the id.

    ``dialect_insert`` is the dialect's ``insert`` (``postgresql.insert``, ``sqlite.insert``),
    whose ``on_conflict_do_update`` both spell the same way.
    """
    upsert = dialect_insert(entry)
    statement: Insert = upsert.on_conflict_do_update(
        index_elements=[entry.c.key_hash],
        set_={name: upsert.excluded[name] for name in REWRITTEN_ON_UPDATE},
    )
    return statement.returning(entry.c.id) if returning else statement


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
