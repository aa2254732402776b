"""SQLCache: LangChain's LLM cache in a relational database, sync and native async.

The facade: options are checked once (``settings``), every call goes through the failure
policy once (``failsafe``), and the database work is the store's (``store``). Each sync
method and its async twin differ only by ``await``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any, Literal

from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from pydantic import BaseModel
from sqlalchemy import Engine, Row
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from langchain_sqlcache.codec import decode_generations
from langchain_sqlcache.entries import delete_value, record_hits, stats_rows
from langchain_sqlcache.failsafe import Failsafe, FailureLog
from langchain_sqlcache.fastpath import lookup_rows, store_value
from langchain_sqlcache.hits import HitBuffer
from langchain_sqlcache.lifecycle import (
    clear_batch,
    delete_expired_batch,
    delete_oldest_batch,
    measure_excess,
    prune_step,
)
from langchain_sqlcache.settings import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_PRUNE_EVERY,
    EntryFilter,
    Settings,
    utc_now,
)
from langchain_sqlcache.store import Store
from langchain_sqlcache.timeouts import (
    DEFAULT_CONNECT_TIMEOUT_SECONDS,
    DEFAULT_STATEMENT_TIMEOUT_SECONDS,
    Timeouts,
)
from langchain_sqlcache.topology import Server, Shard, build_topology

# How long a process's own writes are looked up on the primary rather than a replica: replicas
# on the same network replay within milliseconds (a median 0.6 ms, 7 ms at most, measured
# by tests/test_replicas.py), so a second leaves room for a loaded one.
DEFAULT_READ_YOUR_WRITES_SECONDS = 1.0


@dataclass(frozen=True)
class ModelStats:
    """Counts for the entries of one model (``llm_model``)."""

    entries: int
    generations: int
    bytes: int
    expired: int
    hits: int


@dataclass(frozen=True)
class CacheStats(ModelStats):
    """Counts for a namespace, with a breakdown by model (None: no model found)."""

    models: dict[str | None, ModelStats] = field(default_factory=dict)
    failures: int = 0
    """Operations of this process that failed over to a miss or no-op (on_error="warn")."""
    replica_fallbacks: int = 0
    """Lookups of this process that a replica failed and the next one or the primary
    answered (not failures: the lookup was answered)."""
    failures_by_kind: dict[str, int] = field(default_factory=dict)
    """The same failures by kind: ``unavailable``, ``timeout``, ``busy``, ``circuit_open``,
    ``refused``, ``too_large``, ``unstorable``, ``error`` (see langchain_sqlcache.failsafe)."""

    def as_dict(self) -> dict[str, Any]:
        """Plain data, for JSON."""
        return asdict(self)


class SQLCache(BaseCache):
    """A LangChain LLM cache kept in SQLite, Postgres or MySQL/MariaDB through SQLAlchemy.

    Sync methods run on a sync engine and async methods on an async engine; both run the same
    statements. Each value is one ``llm_cache_entry`` row and one ``llm_cache_generation`` row
    per generation.

    Args:
        url: Database URL. ``postgresql://`` uses psycopg and asyncpg, ``mysql://`` and
            ``mariadb://`` PyMySQL and aiomysql, ``sqlite:///`` sqlite3 and aiosqlite; a driver
            named in the URL is kept for its side. Without a URL or engines:
            ``$LANGCHAIN_SQLCACHE_URL``, else ``sqlite:///.langchain_cache.db``.
        engine: An application's sync engine to reuse (not disposed by ``close``).
        async_engine: An application's async engine to reuse (not disposed by ``aclose``).
        namespace: Caches with different namespaces share the tables but never each other's
            entries.
        schema: The Postgres schema or MySQL database that holds the tables.
        create_tables: On first use, migrate an empty database to the package's schema (it
            ends stamped at head). With False no DDL is ever issued. Either way a schema at
            another revision raises ``SchemaError`` naming the command that fixes it; the
            check is one query per engine, once.
        ttl: Lifetime of an entry (a timedelta or seconds); an expired entry is a miss at
            once, and pruning deletes it.
        max_entries: Cap on this namespace's entries; the oldest go first when over.
        max_bytes: Cap on this namespace's size (UTF-8 bytes of prompts, llm strings and
            values); the oldest go first when over.
        record_hits: Count hits per entry (``hit_count``, ``last_hit_at``), written in
            batches off the lookup's path.
        prune_every: Run one pruning batch every this many updates (None: never
            automatically; call ``prune()``).
        batch_size: Entries deleted per transaction by pruning and clearing.
        on_error: What any failure of an operation does. ``"warn"`` (the default): a
            lookup is a miss and a write a no-op, logged at most once a minute and counted
            in ``stats().failures`` and ``stats().failures_by_kind``; the model call goes on
            as without a cache. ``"raise"``: an ``SQLCacheError`` naming the cause, the
            driver's error chained: ``CacheUnavailableError`` for an outage, a timeout or a
            lock that retries did not get through (``CircuitOpenError`` while the database
            is being skipped), ``DatabaseRefusedError`` for a statement the database refuses
            (a value out of a column's range, a JSON it rejects), ``ValueTooLargeError`` for
            a value over MySQL's max_allowed_packet, ``UnstorableValueError`` for a value the
            cache cannot store exactly. Under either policy ``ConfigurationError`` and
            ``SchemaError`` raise: a bad URL or a missing driver at construction; wrong
            credentials, a missing database, tables missing, at another revision or that the
            role cannot create at the first operation of each family (sync, async). So do
            ``TypeError`` for a ``return_val`` that holds something other than Generations
            (nothing is written) and ``stats()``, a health check. A lost pooled connection or
            a deadlock is retried (4 attempts in all); a connection that cannot be opened, or
            a timeout, is not. A database found unavailable (refused, lost, timed out,
            shutting down, out of connections) is skipped: later operations fail over at
            once, in microseconds, while one probe at a time, 0.25 s after the failure and
            doubling to 2 s, finds when it is back.
        key_secret: Key entries with HMAC-SHA-256 under this secret instead of plain
            SHA-256, so that readers of the table cannot confirm a guessed prompt. Caches
            sharing tables must share the secret; changing it orphans existing entries.
        transaction_pooler: The Postgres URL points at PgBouncer (or a pooler like it) in
            transaction mode: psycopg and asyncpg then use no named prepared statement that a
            later transaction, served by another server connection, would miss or find taken.
            Run migrations against Postgres itself.
        connect_timeout: Seconds the engines built from ``url`` wait for a new connection,
            login included (None: the driver's default, which may be forever). Postgres
            counts whole seconds, at least 2.
        statement_timeout: Seconds one of the cache's statements may run or wait for a lock
            on the server (Postgres' statement_timeout; on MySQL/MariaDB the lock waits, and
            MariaDB's max_statement_time), and one second more for the client to wait for
            an answer before giving up on the connection (None: no bound). Engines passed
            as ``engine=``/``async_engine=`` are left as they are, and migrations run by
            ``langchain-sqlcache db upgrade`` get no statement timeout. A timeout the URL or
            ``connect_args`` sets wins.
        pydantic_classes: Pydantic model classes whose instances in a value (such as
            ``additional_kwargs["parsed"]`` of ``with_structured_output``) come back as
            instances; found by module and qualified name in this list only, never imported
            by a name read from a row. Instances of other classes are stored as their
            ``model_dump()`` and come back as that plain data (see ``codec``).
        replicas: Read replicas of the database (URLs or engines: a Postgres hot standby, a
            MySQL replica). Lookups are spread across them; a replica that fails, or is
            being skipped after failing, is passed over for the next and then the primary.
            Everything that writes (update, delete, clear, prune, hit counts, import) and
            ``stats()`` go to the primary. A replica is never migrated (its schema comes
            from the primary's), and it lags: see ``read_your_writes``.
        shards: Spread the entries across several databases instead of ``url``/engines: a
            list of URLs, engines or ``Shard(url, replicas=[...], name=...)``. Each key lives
            on exactly one shard, chosen by rendezvous hashing of its key over the shards'
            names (adding a shard moves about 1/N of the keys); a lookup or an update is one
            round trip to that shard, while ``clear``, ``prune``, ``stats`` and export run on
            every shard. ``max_entries`` and ``max_bytes`` are shared out evenly: each shard
            keeps at most its part.
        read_your_writes: Seconds after this process writes or deletes a key during which
            its lookups of that key go to the primary rather than a replica, which may not
            have replayed the write yet (0: never). Other processes' writes reach a
            replica's lookups after the replica's lag.
        **engine_kwargs: Passed to ``create_engine`` and ``create_async_engine`` for engines
            built from URLs.

    """

    def __init__(
        self,
        url: str | URL | None = None,
        *,
        engine: Engine | None = None,
        async_engine: AsyncEngine | None = None,
        namespace: str = "",
        schema: str | None = None,
        create_tables: bool = True,
        ttl: timedelta | float | None = None,
        max_entries: int | None = None,
        max_bytes: int | None = None,
        record_hits: bool = False,
        prune_every: int | None = DEFAULT_PRUNE_EVERY,
        batch_size: int = DEFAULT_BATCH_SIZE,
        on_error: Literal["warn", "raise"] = "warn",
        key_secret: str | bytes | None = None,
        transaction_pooler: bool = False,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT_SECONDS,
        statement_timeout: float | None = DEFAULT_STATEMENT_TIMEOUT_SECONDS,
        pydantic_classes: Iterable[type[BaseModel]] = (),
        replicas: Sequence[Server] = (),
        shards: Sequence[Server | Shard] = (),
        read_your_writes: float = DEFAULT_READ_YOUR_WRITES_SECONDS,
        **engine_kwargs: Any,
    ) -> None:
        self.settings = Settings.of(
            namespace=namespace,
            schema=schema,
            create_tables=create_tables,
            ttl=ttl,
            max_entries=max_entries,
            max_bytes=max_bytes,
            record_hits=record_hits,
            prune_every=prune_every,
            batch_size=batch_size,
            on_error=on_error,
            key_secret=key_secret,
            pydantic_classes=pydantic_classes,
        )
        """The cache's options, checked."""
        self._failures = FailureLog()
        self._failsafe = Failsafe(self.settings.on_error, self._failures)
        self._hits = HitBuffer() if record_hits else None
        self.topology = build_topology(
            self.settings,
            self._failures,
            url=url,
            engine=engine,
            async_engine=async_engine,
            replicas=replicas,
            shards=shards,
            read_your_writes=read_your_writes,
            transaction_pooler=transaction_pooler,
            timeouts=Timeouts(connect=connect_timeout, statement=statement_timeout),
            engine_kwargs=engine_kwargs,
        )
        """The shards, each a primary and its replicas (see langchain_sqlcache.topology)."""
        self.store: Store = self.topology.databases[0].primary
        """The primary's engines and how operations reach them (see
        langchain_sqlcache.store); a sharded cache's first shard's."""

    # -- the options, as checked (read-only: see settings) ----------------------------------

    @property
    def namespace(self) -> str:
        """The ``namespace`` option."""
        return self.settings.namespace

    @property
    def schema(self) -> str | None:
        """The ``schema`` option."""
        return self.settings.schema

    @property
    def create_tables(self) -> bool:
        """The ``create_tables`` option."""
        return self.settings.create_tables

    @property
    def ttl(self) -> timedelta | None:
        """The ``ttl`` option."""
        return self.settings.ttl

    @property
    def max_entries(self) -> int | None:
        """The ``max_entries`` option."""
        return self.settings.max_entries

    @property
    def max_bytes(self) -> int | None:
        """The ``max_bytes`` option."""
        return self.settings.max_bytes

    @property
    def prune_every(self) -> int | None:
        """The ``prune_every`` option."""
        return self.settings.prune_every

    @property
    def batch_size(self) -> int:
        """The ``batch_size`` option."""
        return self.settings.batch_size

    @property
    def on_error(self) -> Literal["warn", "raise"]:
        """The ``on_error`` option."""
        return self.settings.on_error

    # -- the BaseCache contract ------------------------------------------------------------

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """Return the cached generations for ``prompt`` and ``llm_string``, or None."""
        key_hash, now = self.settings.key_hash(prompt, llm_string), utc_now()
        database = self.topology.for_key(key_hash)
        rows: Sequence[Sequence[Any]] = self._failsafe.run(
            "lookup", (), lambda: database.lookup(key_hash, lookup_rows, key_hash, now)
        )
        value = decode_generations(rows, key_hash=key_hash, models=self.settings.models)
        if value is not None and self._hits is not None:
            self._flush_hits(self._hits.add(key_hash, now))
        return value

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """Async :meth:`lookup`, on the async engine."""
        key_hash, now = self.settings.key_hash(prompt, llm_string), utc_now()
        database = self.topology.for_key(key_hash)
        rows: Sequence[Sequence[Any]] = await self._failsafe.arun(
            "lookup", (), lambda: database.alookup(key_hash, lookup_rows, key_hash, now)
        )
        value = decode_generations(rows, key_hash=key_hash, models=self.settings.models)
        if value is not None and self._hits is not None:
            await self._aflush_hits(self._hits.add(key_hash, now))
        return value

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Store ``return_val``, replacing the key's whole previous value atomically.

        An empty ``return_val`` deletes the entry: an empty value is not an answer a model
        can return, so the next lookup is a miss.

        A value that holds something the cache cannot store and rebuild exactly (an Enum,
        an arbitrary object: see ``codec``) is refused before any database work, under the
        failure policy: a counted no-op with a warning under ``on_error="warn"``.

        Raises:
            TypeError: ``return_val`` holds something other than a Generation (nothing is
                written).
            UnstorableValueError: under ``on_error="raise"``, a value the cache cannot store
                exactly, named by its path and type (nothing is written).

        """
        self._failsafe.run("update", None, lambda: self._store(prompt, llm_string, return_val))

    def _store(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        entry_row, generation_rows = self.settings.rows(prompt, llm_string, return_val)
        database = self.topology.for_key(entry_row["key_hash"])
        database.primary.run(store_value, entry_row, generation_rows)
        database.wrote(entry_row["key_hash"])
        if self.settings.prune_due():
            database.primary.write(prune_step, *self._prune_arguments())

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Async :meth:`update`, on the async engine."""
        await self._failsafe.arun(
            "update", None, lambda: self._astore(prompt, llm_string, return_val)
        )

    async def _astore(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        entry_row, generation_rows = self.settings.rows(prompt, llm_string, return_val)
        database = self.topology.for_key(entry_row["key_hash"])
        await database.primary.arun(store_value, entry_row, generation_rows)
        database.wrote(entry_row["key_hash"])
        if self.settings.prune_due():
            await database.primary.awrite(prune_step, *self._prune_arguments())

    def clear(self, **kwargs: Any) -> None:
        """Delete this namespace's entries, in batches; other namespaces are kept.

        Args:
            **kwargs: Filters, all optional: ``llm_string`` (only that llm_string's
                entries), ``older_than`` (entries last written before this aware datetime,
                or longer ago than this timedelta), ``expired_only=True`` (entries whose ttl
                has passed).

        Raises:
            TypeError: An unknown keyword argument.

        """
        which = self.settings.entry_filter(**kwargs)
        for store in self.topology.primaries:  # a shard that fails leaves the others cleared
            self._failsafe.run("clear", None, partial(self._clear, store, which))

    def _clear(self, store: Store, which: EntryFilter) -> None:
        while store.write(clear_batch, which, self.settings.batch_size):
            pass

    async def aclear(self, **kwargs: Any) -> None:
        """Async :meth:`clear`, on the async engine."""
        which = self.settings.entry_filter(**kwargs)
        for store in self.topology.primaries:
            await self._failsafe.arun("clear", None, partial(self._aclear, store, which))

    async def _aclear(self, store: Store, which: EntryFilter) -> None:
        while await store.awrite(clear_batch, which, self.settings.batch_size):
            pass

    # -- lifecycle and stats ---------------------------------------------------------------

    def delete(self, prompt: str, llm_string: str) -> bool:
        """Delete one entry; return whether it existed (False when the database failed)."""
        key_hash = self.settings.key_hash(prompt, llm_string)
        database = self.topology.for_key(key_hash)
        database.wrote(key_hash)
        deleted = self._failsafe.run(
            "delete", 0, lambda: database.primary.write(delete_value, key_hash)
        )
        return deleted > 0

    async def adelete(self, prompt: str, llm_string: str) -> bool:
        """Async :meth:`delete`, on the async engine."""
        key_hash = self.settings.key_hash(prompt, llm_string)
        database = self.topology.for_key(key_hash)
        database.wrote(key_hash)
        deleted = await self._failsafe.arun(
            "delete", 0, lambda: database.primary.awrite(delete_value, key_hash)
        )
        return deleted > 0

    def prune(self) -> int:
        """Delete expired entries, then the oldest over the caps, in bounded batches.

        Returns:
            How many entries were deleted.

        """
        removed = [0]  # what was deleted before a failure counts too
        for store in self.topology.primaries:
            self._failsafe.run("prune", None, partial(self._prune, store, removed))
        return removed[0]

    def _prune(self, store: Store, removed: list[int]) -> None:
        namespace, now, max_entries, max_bytes, batch = self._prune_arguments()
        while deleted := store.write(delete_expired_batch, namespace, now, batch):
            removed[0] += deleted
        excess = store.read(measure_excess, namespace, max_entries, max_bytes)
        while excess:
            deleted, excess = store.write(delete_oldest_batch, namespace, excess, batch)
            removed[0] += deleted

    async def aprune(self) -> int:
        """Async :meth:`prune`, on the async engine."""
        removed = [0]
        for store in self.topology.primaries:
            await self._failsafe.arun("prune", None, partial(self._aprune, store, removed))
        return removed[0]

    async def _aprune(self, store: Store, removed: list[int]) -> None:
        namespace, now, max_entries, max_bytes, batch = self._prune_arguments()
        while deleted := await store.awrite(delete_expired_batch, namespace, now, batch):
            removed[0] += deleted
        excess = await store.aread(measure_excess, namespace, max_entries, max_bytes)
        while excess:
            deleted, excess = await store.awrite(delete_oldest_batch, namespace, excess, batch)
            removed[0] += deleted

    def stats(self) -> CacheStats:
        """Entries, generations, bytes, expired entries and hits of this namespace, by model.

        One aggregate query over the namespace's entries (pending hits are written first),
        plus the operations that failed over to a miss or no-op in this process, by kind. A
        health check wants to know when the database is down, so a failure raises here
        under either policy (``CacheUnavailableError`` for an outage).
        """
        self._flush_hits(self._hits.take() if self._hits else [])
        namespace, now = self.settings.stored_namespace, utc_now()
        rows: list[Row[Any]] = []
        for store in self.topology.primaries:
            rows += self._failsafe.run(
                "stats",
                (),
                partial(store.read, stats_rows, namespace, now),
                on_error="raise",
            )
        return self._stats_of(rows)

    async def astats(self) -> CacheStats:
        """Async :meth:`stats`, on the async engine."""
        await self._aflush_hits(self._hits.take() if self._hits else [])
        namespace, now = self.settings.stored_namespace, utc_now()
        rows: list[Row[Any]] = []
        for store in self.topology.primaries:
            rows += await self._failsafe.arun(
                "stats",
                (),
                partial(store.aread, stats_rows, namespace, now),
                on_error="raise",
            )
        return self._stats_of(rows)

    def close(self) -> None:
        """Write pending hits; dispose of the sync engines this cache built."""
        if self.store.engines is not None and self._hits is not None:
            self._flush_hits(self._hits.take())
        for store in self.topology.stores:
            store.close()

    async def aclose(self) -> None:
        """Dispose of every engine this cache built, once pending work is done.

        Operations of cancelled callers finish first, then pending hits are written.
        """
        for store in self.topology.stores:
            await store.adrain()
        if self.store.async_engines is not None and self._hits is not None:
            await self._aflush_hits(self._hits.take())
        for store in self.topology.stores:
            await store.aclose()
        self.close()

    # -- shared by the sync and async paths ------------------------------------------------

    def _flush_hits(self, hits: list[dict[str, Any]]) -> None:
        # A lost hit count never fails the lookup that flushes it.
        for store, batch in self._hits_by_primary(hits):
            self._failsafe.run(
                "record hits", None, partial(store.write, record_hits, batch), on_error="warn"
            )

    async def _aflush_hits(self, hits: list[dict[str, Any]]) -> None:
        for store, batch in self._hits_by_primary(hits):
            await self._failsafe.arun(
                "record hits", None, partial(store.awrite, record_hits, batch), on_error="warn"
            )

    def _hits_by_primary(self, hits: list[dict[str, Any]]) -> list[tuple[Store, list[Any]]]:
        """Each shard's hit counts, for its primary (nothing, on most hits: none are due)."""
        if not hits:
            return []
        keys = [hit["hit_key_hash"] for hit in hits]
        return [
            (database.primary, [hits[i] for i in positions])
            for database, positions in self.topology.by_database(keys)
        ]

    def _prune_arguments(self) -> tuple[str, Any, int | None, int | None, int]:
        settings, shards = self.settings, len(self.topology.databases)
        return (
            settings.stored_namespace,
            utc_now(),
            _share(settings.max_entries, shards),
            _share(settings.max_bytes, shards),
            settings.batch_size,
        )

    def _stats_of(self, rows: Sequence[Row[Any]]) -> CacheStats:
        return _stats_of(
            rows,
            self._failures,
            sum(database.replica_failures.count for database in self.topology.databases),
        )


def _share(cap: int | None, shards: int) -> int | None:
    """Each shard's part of a cap on the whole cache (keys spread evenly across shards)."""
    return cap if cap is None else math.ceil(cap / shards)


def _stats_of(rows: Sequence[Row[Any]], failures: FailureLog, replica_fallbacks: int) -> CacheStats:
    models: dict[str | None, ModelStats] = {}
    for row in rows:  # a model's rows of every shard, added up
        seen = models.get(row.llm_model, ModelStats(0, 0, 0, 0, 0))
        models[row.llm_model] = ModelStats(
            entries=seen.entries + int(row.entries),
            generations=seen.generations + int(row.generations),
            bytes=seen.bytes + int(row.bytes),
            expired=seen.expired + int(row.expired),
            hits=seen.hits + int(row.hits),
        )
    return CacheStats(
        entries=sum(m.entries for m in models.values()),
        generations=sum(m.generations for m in models.values()),
        bytes=sum(m.bytes for m in models.values()),
        expired=sum(m.expired for m in models.values()),
        hits=sum(m.hits for m in models.values()),
        models=models,
        failures=failures.count,
        failures_by_kind=dict(failures.by_kind),
        replica_fallbacks=replica_fallbacks,
    )
