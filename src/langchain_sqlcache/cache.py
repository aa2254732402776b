"""SQLCache: LangChain's LLM cache in a relational database, sync and native async."""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import random
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from pydantic import BaseModel
from sqlalchemy import Connection, Engine, Row, create_engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from langchain_sqlcache.codec import (
    decode_generations,
    encode_entry,
    entry_key,
    escape_text,
    model_allowlist,
)
from langchain_sqlcache.engines import (
    DEFAULT_CONNECT_TIMEOUT_SECONDS,
    DEFAULT_STATEMENT_TIMEOUT_SECONDS,
    EnginePair,
    Timeouts,
    async_deadline,
    build_pair,
    driver_urls,
    given_pair,
    resolve_url,
)
from langchain_sqlcache.entries import delete_value, record_hits, stats_rows
from langchain_sqlcache.errors import (
    ConfigurationError,
    MissingEngineError,
    SchemaError,
    checked_identifier,
    configuration_error,
    is_transient,
)
from langchain_sqlcache.failsafe import (
    CircuitBreaker,
    Failsafe,
    FailureLog,
    kind_of,
    opened,
    retryable,
)
from langchain_sqlcache.fastpath import lookup_rows, store_value
from langchain_sqlcache.hits import HitBuffer
from langchain_sqlcache.lifecycle import (
    clear_batch,
    delete_expired_batch,
    delete_oldest_batch,
    measure_excess,
    prune_step,
)
from langchain_sqlcache.migrations import ensure_schema
from langchain_sqlcache.models import NAMESPACE_MAX_LENGTH
from langchain_sqlcache.sqlalchemy_internals import greenlet_spawn

logger = logging.getLogger("langchain_sqlcache")

P = ParamSpec("P")
T = TypeVar("T")

# An operation that meets a transient failure is retried whole, a few times.
ATTEMPTS = 4
RETRY_BASE_DELAY_SECONDS = 0.01
DEFAULT_BATCH_SIZE = 1000
DEFAULT_PRUNE_EVERY = 100
CLEAR_FILTERS = ("llm_string", "older_than", "expired_only")


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
        **engine_kwargs: Passed to ``create_engine`` and ``create_async_engine`` for engines
            built from ``url``.

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
        **engine_kwargs: Any,
    ) -> None:
        namespace = checked_namespace(namespace)
        if url is None and engine is None and async_engine is None:
            url = resolve_url(None)
        if url is None and (engine_kwargs or transaction_pooler):
            options = sorted(engine_kwargs) + (["transaction_pooler"] if transaction_pooler else [])
            msg = f"engine options {options} need a url to build engines from"
            raise ConfigurationError(msg)
        self.namespace = namespace
        self.schema = checked_identifier(schema)
        self._key_secret = key_secret.encode() if isinstance(key_secret, str) else key_secret
        self.create_tables = create_tables
        self.ttl = _positive_duration(ttl)
        self.max_entries = _positive("max_entries", max_entries)
        self.max_bytes = _positive("max_bytes", max_bytes)
        self.prune_every = _positive("prune_every", prune_every)
        self.batch_size = _positive("batch_size", batch_size) or DEFAULT_BATCH_SIZE
        if on_error not in ("warn", "raise"):
            msg = f"on_error must be 'warn' or 'raise', not {on_error!r}"
            raise ConfigurationError(msg)
        self.on_error = on_error
        timeouts = Timeouts(connect=connect_timeout, statement=statement_timeout)
        self._models = model_allowlist(pydantic_classes)
        self._failures = FailureLog()
        self._failsafe = Failsafe(on_error, self._failures)
        self._hits = HitBuffer() if record_hits else None
        # Operations whose caller was cancelled, finishing on their own (see _arun).
        self._background: set[asyncio.Future[Any]] = set()
        self._writes = itertools.count(1)
        self._engines: EnginePair[Engine] | None = None
        self._async_engines: EnginePair[AsyncEngine] | None = None
        parsed = resolve_url(url) if url is not None else None
        if engine is not None:
            self._engines = given_pair(engine, schema)
        elif parsed is not None:
            self._engines = build_pair(
                create_engine,
                parsed,
                engine_kwargs,
                schema,
                transaction_pooler=transaction_pooler,
                timeouts=timeouts,
            )
        # Async drivers bind a connection to the event loop that opened it, so the async
        # pools this cache builds are per loop (see _loop_engines); the first is built here so
        # that a missing driver fails now.
        self._build_async_pair: Callable[[], EnginePair[AsyncEngine]] | None = None
        if async_engine is not None:
            self._async_engines = given_pair(async_engine, schema)
        elif parsed is not None:
            self._build_async_pair = functools.partial(
                build_pair,
                create_async_engine,
                parsed,
                dict(engine_kwargs),
                schema,
                transaction_pooler=transaction_pooler,
                timeouts=timeouts,
            )
            self._async_engines = self._build_async_pair()
        # The bound the async path puts on one attempt where the driver has none (aiomysql).
        self._async_deadline = (
            async_deadline(driver_urls(parsed)[1], timeouts)
            if parsed is not None and async_engine is None
            else None
        )
        self._escaped_namespace = escape_text(namespace)
        # One breaker per database server: a cache built from one URL has one for both
        # families; engines of different servers (given ones) fail apart.
        self._breaker, self._async_breaker = _breakers(self._engines, self._async_engines)
        self._ready_lock = threading.Lock()
        self._engines_ready = False
        self._async_engines_ready = False
        self._async_engines_claimed = False
        self._loop_pairs: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[EnginePair[AsyncEngine], AsyncGenerator[None, None]]
        ] = weakref.WeakKeyDictionary()

    # -- the BaseCache contract ------------------------------------------------------------

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """Return the cached generations for ``prompt`` and ``llm_string``, or None."""
        key_hash, now = self._key_hash(prompt, llm_string), _now()
        rows: Sequence[Sequence[Any]] = self._failsafe.run(
            "lookup", (), lambda: self._run(lookup_rows, key_hash, now)
        )
        value = decode_generations(rows, key_hash=key_hash, models=self._models)
        if value is not None and self._hits is not None:
            self._flush_hits(self._hits.add(key_hash, now))
        return value

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """Async :meth:`lookup`, on the async engine."""
        key_hash, now = self._key_hash(prompt, llm_string), _now()
        rows: Sequence[Sequence[Any]] = await self._failsafe.arun(
            "lookup", (), lambda: self._arun(lookup_rows, key_hash, now)
        )
        value = decode_generations(rows, key_hash=key_hash, models=self._models)
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
        entry_row, generation_rows = self._encode(prompt, llm_string, return_val)
        self._run(store_value, entry_row, generation_rows)
        if self._prune_due():
            self._write(prune_step, *self._prune_arguments())

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Async :meth:`update`, on the async engine."""
        await self._failsafe.arun(
            "update", None, lambda: self._astore(prompt, llm_string, return_val)
        )

    async def _astore(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        entry_row, generation_rows = self._encode(prompt, llm_string, return_val)
        await self._arun(store_value, entry_row, generation_rows)
        if self._prune_due():
            await self._awrite(prune_step, *self._prune_arguments())

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
        filters = self._clear_filters(kwargs)
        self._failsafe.run("clear", None, lambda: self._clear(filters))

    def _clear(self, filters: dict[str, Any]) -> None:
        while self._write(clear_batch, self._escaped_namespace, filters, self.batch_size):
            pass

    async def aclear(self, **kwargs: Any) -> None:
        """Async :meth:`clear`, on the async engine."""
        filters = self._clear_filters(kwargs)
        await self._failsafe.arun("clear", None, lambda: self._aclear(filters))

    async def _aclear(self, filters: dict[str, Any]) -> None:
        while await self._awrite(clear_batch, self._escaped_namespace, filters, self.batch_size):
            pass

    # -- lifecycle and stats ---------------------------------------------------------------

    def delete(self, prompt: str, llm_string: str) -> bool:
        """Delete one entry; return whether it existed (False when the database failed)."""
        key_hash = self._key_hash(prompt, llm_string)
        return self._failsafe.run("delete", 0, lambda: self._write(delete_value, key_hash)) > 0

    async def adelete(self, prompt: str, llm_string: str) -> bool:
        """Async :meth:`delete`, on the async engine."""
        key_hash = self._key_hash(prompt, llm_string)
        deleted = await self._failsafe.arun(
            "delete", 0, lambda: self._awrite(delete_value, key_hash)
        )
        return deleted > 0

    def prune(self) -> int:
        """Delete expired entries, then the oldest over the caps, in bounded batches.

        Returns:
            How many entries were deleted.

        """
        removed = [0]  # what was deleted before a failure counts too
        self._failsafe.run("prune", None, lambda: self._prune(removed))
        return removed[0]

    def _prune(self, removed: list[int]) -> None:
        namespace, now, max_entries, max_bytes, batch = self._prune_arguments()
        while deleted := self._write(delete_expired_batch, namespace, now, batch):
            removed[0] += deleted
        excess = self._read(measure_excess, namespace, max_entries, max_bytes)
        while excess:
            deleted, excess = self._write(delete_oldest_batch, namespace, excess, batch)
            removed[0] += deleted

    async def aprune(self) -> int:
        """Async :meth:`prune`, on the async engine."""
        removed = [0]
        await self._failsafe.arun("prune", None, lambda: self._aprune(removed))
        return removed[0]

    async def _aprune(self, removed: list[int]) -> None:
        namespace, now, max_entries, max_bytes, batch = self._prune_arguments()
        while deleted := await self._awrite(delete_expired_batch, namespace, now, batch):
            removed[0] += deleted
        excess = await self._aread(measure_excess, namespace, max_entries, max_bytes)
        while excess:
            deleted, excess = await self._awrite(delete_oldest_batch, namespace, excess, batch)
            removed[0] += deleted

    def stats(self) -> CacheStats:
        """Entries, generations, bytes, expired entries and hits of this namespace, by model.

        One aggregate query over the namespace's entries (pending hits are written first),
        plus the operations that failed over to a miss or no-op in this process, by kind. A
        health check wants to know when the database is down, so a failure raises here
        under either policy (``CacheUnavailableError`` for an outage).
        """
        self._flush_hits(self._hits.take() if self._hits else [])
        namespace, now = self._escaped_namespace, _now()
        rows: Sequence[Row[Any]] = self._failsafe.run(
            "stats", (), lambda: self._read(stats_rows, namespace, now), on_error="raise"
        )
        return _stats_of(rows, self._failures)

    async def astats(self) -> CacheStats:
        """Async :meth:`stats`, on the async engine."""
        await self._aflush_hits(self._hits.take() if self._hits else [])
        namespace, now = self._escaped_namespace, _now()
        rows: Sequence[Row[Any]] = await self._failsafe.arun(
            "stats", (), lambda: self._aread(stats_rows, namespace, now), on_error="raise"
        )
        return _stats_of(rows, self._failures)

    def close(self) -> None:
        """Write pending hits; dispose of the sync engines this cache built."""
        if self._engines is not None and self._hits is not None:
            self._flush_hits(self._hits.take())
        for engine in self._engines.owned if self._engines else ():
            engine.dispose()

    async def aclose(self) -> None:
        """Dispose of every engine this cache built, once pending work is done.

        Operations of cancelled callers finish first, then pending hits are written.
        """
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(work for work in self._background if work.get_loop() is loop),
            return_exceptions=True,
        )
        if self._async_engines is not None and self._hits is not None:
            await self._aflush_hits(self._hits.take())
        # This loop's pools close here; those of other loops close as their loops shut down.
        if loop in self._loop_pairs:
            _, closer = self._loop_pairs.pop(loop)
            await closer.aclose()
        self.close()

    # -- shared by the sync and async paths ------------------------------------------------

    def _key_hash(self, prompt: str, llm_string: str) -> str:
        return entry_key(self.namespace, prompt, llm_string, self._key_secret)

    def _encode(
        self, prompt: str, llm_string: str, return_val: Sequence[Any]
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        now = _now()
        return encode_entry(
            self.namespace,
            prompt,
            llm_string,
            return_val,
            created_at=now,
            updated_at=now,
            expires_at=now + self.ttl if self.ttl else None,
            secret=self._key_secret,
            models=self._models,
        )

    def _clear_filters(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(kwargs) - set(CLEAR_FILTERS))
        if unknown:
            msg = (
                f"clear() got unexpected keyword arguments: {', '.join(unknown)} "
                f"(it takes {', '.join(CLEAR_FILTERS)})"
            )
            raise TypeError(msg)
        filters: dict[str, Any] = {}
        if kwargs.get("llm_string") is not None:
            filters["llm_string"] = escape_text(kwargs["llm_string"])
        older_than = kwargs.get("older_than")
        if isinstance(older_than, timedelta):
            filters["cutoff"] = _now() - older_than
        elif isinstance(older_than, datetime):
            if older_than.tzinfo is None:
                msg = "older_than must be an aware datetime (or a timedelta)"
                raise TypeError(msg)
            filters["cutoff"] = older_than
        elif older_than is not None:
            msg = f"older_than must be a datetime or a timedelta, not {type(older_than).__name__}"
            raise TypeError(msg)
        if kwargs.get("expired_only"):
            filters["now"] = _now()
        return filters

    def _prune_due(self) -> bool:
        return self.prune_every is not None and next(self._writes) % self.prune_every == 0

    def _prune_arguments(self) -> tuple[str, datetime, int | None, int | None, int]:
        return self._escaped_namespace, _now(), self.max_entries, self.max_bytes, self.batch_size

    def _flush_hits(self, hits: list[dict[str, Any]]) -> None:
        if hits:  # a lost hit count never fails the lookup that flushes it
            self._failsafe.run(
                "record hits", None, lambda: self._write(record_hits, hits), on_error="warn"
            )

    async def _aflush_hits(self, hits: list[dict[str, Any]]) -> None:
        if hits:
            await self._failsafe.arun(
                "record hits", None, lambda: self._awrite(record_hits, hits), on_error="warn"
            )

    def _ready_engines(self) -> EnginePair[Engine]:
        if self._engines is None:
            raise MissingEngineError(_missing_engine_message("sync", "engine", "create_engine"))
        if not self._engines_ready:
            with self._ready_lock:
                if not self._engines_ready:
                    try:
                        _check_schema(self._engines, self.schema, self.create_tables)
                    except Exception as exc:
                        _raise_if_refused(exc, self._engines.writer.url)
                        raise
                    self._engines_ready = True
        return self._engines

    async def _ready_async_engines(self) -> EnginePair[AsyncEngine]:
        if self._async_engines is None:
            raise MissingEngineError(
                _missing_engine_message("async", "async_engine", "create_async_engine")
            )
        engines = self._async_engines
        if self._build_async_pair is not None:
            engines = await self._loop_engines(self._build_async_pair)
        if not self._async_engines_ready:
            # Tasks that race here each run the check (the migration itself serializes on a
            # database lock); no lock is held across an await, so the cache stays usable from
            # successive event loops.
            try:
                await greenlet_spawn(
                    _check_schema,
                    engines.sync,
                    self.schema,
                    self.create_tables,
                    _require_await=False,
                )
            except Exception as exc:
                _raise_if_refused(exc, engines.writer.url)
                raise
            self._async_engines_ready = True
        return engines

    async def _loop_engines(
        self, build: Callable[[], EnginePair[AsyncEngine]]
    ) -> EnginePair[AsyncEngine]:
        """The pools this cache built for the running event loop.

        Each loop gets its own (the first takes those built by __init__), so the same cache
        serves successive asyncio.run() calls and loops running side by side in threads.
        """
        loop = asyncio.get_running_loop()
        if loop not in self._loop_pairs:
            assert self._async_engines is not None  # noqa: S101 - set with the builder
            pair = build() if self._async_engines_claimed else self._async_engines
            self._async_engines_claimed = True
            closer = self._close_on_loop_shutdown(pair.owned)
            await anext(closer)
            self._loop_pairs[loop] = (pair, closer)
        return self._loop_pairs[loop][0]

    @staticmethod
    async def _close_on_loop_shutdown(engines: Sequence[AsyncEngine]) -> AsyncGenerator[None, None]:
        """Close the pools on their own loop when it shuts down.

        asyncio.run() (and pytest-asyncio) finalize the async generators still alive on a
        loop before closing it, and this one's ``finally`` runs there: the pooled connections
        are closed by the loop that opened them instead of by the garbage collector, after the
        loop is gone (which drivers such as aiomysql report as errors).
        """
        try:
            yield
        finally:
            for engine in engines:
                await engine.dispose()

    def _read(
        self, operation: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        return self._run(_on_reader, lambda connection: operation(connection, *args, **kwargs))

    def _write(
        self, operation: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        return self._run(_in_transaction, lambda connection: operation(connection, *args, **kwargs))

    async def _aread(
        self, operation: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        return await self._arun(
            _on_reader, lambda connection: operation(connection, *args, **kwargs)
        )

    async def _awrite(
        self, operation: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        return await self._arun(
            _in_transaction, lambda connection: operation(connection, *args, **kwargs)
        )

    def _run(
        self,
        work: Callable[Concatenate[EnginePair[Engine], P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run ``work`` on the sync engines, unless their server is being skipped.

        Failures that another attempt may get through at once (a lost pooled connection, a
        deadlock, a failover) are retried with jittered backoff; the circuit breaker learns
        how the operation ended.
        """
        probe = self._breaker.admit()
        for attempt in range(1, ATTEMPTS + 1):
            try:
                result = work(self._ready_engines(), *args, **kwargs)
            except BaseException as exc:
                if not _retry(self._breaker, probe, exc, attempt):
                    raise
            else:
                self._breaker.settle(probe, None)
                return result
            time.sleep(_backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _arun(
        self,
        work: Callable[Concatenate[EnginePair[Engine], P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Async :meth:`_run`: the same code, on the async engine's pool and driver.

        The database work is shielded from the caller's cancellation: a cancelled caller
        gets its CancelledError at once, while the operation finishes on its own, so its
        transaction ends (a value is written whole or not at all) and its connection goes
        back to the pool instead of being abandoned mid-statement.
        """
        task = asyncio.ensure_future(self._arun_unshielded(work, *args, **kwargs))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            self._background.add(task)
            task.add_done_callback(self._finished_in_background)
            raise

    def _finished_in_background(self, task: asyncio.Future[Any]) -> None:
        self._background.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:  # nobody is left to raise it to: counted and logged
            self._failures.record("cancelled operation", kind_of(exc) or "error", exc)

    async def _within(self, deadline: float | None, operation: Awaitable[T]) -> T:
        """Await ``operation``, giving up after ``deadline`` seconds (None: no bound).

        The bound of an attempt on drivers that have no read timeout of their own
        (aiomysql, async psycopg; see engines.async_deadline): against a server that stops
        answering mid-statement nothing else returns. At the deadline the caller gets a
        TimeoutError at once (a failure of kind "timeout", not retried), while the
        operation is cancelled in the background, where the pool throws its connection
        away (statements.run_on_reader, SQLAlchemy's Connection): waiting for that could
        cost a driver's cancel request to the same hung server.
        """
        if deadline is None:
            return await operation
        task = asyncio.ensure_future(operation)
        try:
            done, _ = await asyncio.wait({task}, timeout=deadline)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task in done:
            return task.result()
        task.cancel()
        self._background.add(task)
        task.add_done_callback(self._finished_in_background)
        msg = f"no answer from the database within {deadline:g} s"
        raise TimeoutError(msg)

    async def _arun_unshielded(
        self,
        work: Callable[Concatenate[EnginePair[Engine], P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        probe = self._async_breaker.admit()
        for attempt in range(1, ATTEMPTS + 1):
            try:
                engines = await self._ready_async_engines()
                # One hand-off to SQLAlchemy's greenlet for the checkout, the statements and
                # the return to the pool, where the async engine's sync facade drives the
                # async driver.
                result = await self._within(
                    self._async_deadline,
                    greenlet_spawn(work, engines.sync, *args, _require_await=False, **kwargs),
                )
            except BaseException as exc:
                if not _retry(self._async_breaker, probe, exc, attempt):
                    raise
            else:
                self._async_breaker.settle(probe, None)
                return result
            await asyncio.sleep(_backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover


# -- work on a family's engines: the sync methods run it directly, the async ones in
# SQLAlchemy's greenlet, on the sync facade of the async engines --------------------------


def _in_transaction(engines: EnginePair[Engine], operation: Callable[[Connection], T]) -> T:
    with opened(engines.writer) as connection, connection.begin():
        return operation(connection)


def _on_reader(engines: EnginePair[Engine], operation: Callable[[Connection], T]) -> T:
    with opened(engines.reader) as connection:
        return operation(connection)


def _check_schema(engines: EnginePair[Engine], schema: str | None, create: bool) -> None:
    """The first use's check (and creation) of the tables.

    A database error here that no retry fixes (a role without the right to create the
    tables, say) is the configuration's, raised as SchemaError under either policy.
    """
    with opened(engines.writer) as connection:
        try:
            ensure_schema(connection, schema, create=create)
        except DBAPIError as exc:
            if is_transient(exc):
                raise
            detail = str(exc.orig).strip().splitlines()
            msg = f"the cache's tables cannot be checked or created: {detail[0] if detail else exc}"
            raise SchemaError(msg) from exc


def _retry(breaker: CircuitBreaker, probe: bool, exc: BaseException, attempt: int) -> bool:
    """Whether to try an operation again after ``exc``; if not, tell the breaker."""
    if attempt < ATTEMPTS and isinstance(exc, Exception) and retryable(exc):
        return True
    breaker.settle(probe, exc)
    return False


def _breakers(
    engines: EnginePair[Engine] | None, async_engines: EnginePair[AsyncEngine] | None
) -> tuple[CircuitBreaker, CircuitBreaker]:
    """A breaker for each family's server, the same one when both talk to the same server."""
    urls = [pair.writer.url if pair is not None else None for pair in (engines, async_engines)]
    servers = [
        (url.get_backend_name(), url.host, url.port, url.database) if url else None for url in urls
    ]
    names = [
        url.set(drivername=url.get_backend_name()).render_as_string(hide_password=True)
        if url
        else "database"
        for url in urls
    ]
    breaker = CircuitBreaker(names[0])
    return breaker, breaker if servers[0] == servers[1] else CircuitBreaker(names[1])


def _raise_if_refused(exc: Exception, url: URL) -> None:
    """Raise a ConfigurationError, the driver's error chained, for a login or database refused.

    Found at the first use of each family's engines, the first time they connect: the same
    one-line error on all six drivers, under both failure policies.
    """
    error = configuration_error(exc, url)
    if error is not None:
        raise error from exc


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _stats_of(rows: Sequence[Row[Any]], failures: FailureLog) -> CacheStats:
    models = {
        row.llm_model: ModelStats(
            entries=int(row.entries),
            generations=int(row.generations),
            bytes=int(row.bytes),
            expired=int(row.expired),
            hits=int(row.hits),
        )
        for row in rows
    }
    return CacheStats(
        entries=sum(m.entries for m in models.values()),
        generations=sum(m.generations for m in models.values()),
        bytes=sum(m.bytes for m in models.values()),
        expired=sum(m.expired for m in models.values()),
        hits=sum(m.hits for m in models.values()),
        models=models,
        failures=failures.count,
        failures_by_kind=dict(failures.by_kind),
    )


def checked_namespace(namespace: object) -> str:
    """Return ``namespace`` if the cache can keep it apart from every other; else raise.

    The one set of rules for a namespace, wherever it comes from (the constructor, a line
    that ``import`` reads).

    Raises:
        ConfigurationError: Not a string, longer than its column once stored, or ending
            with a space.

    """
    if not isinstance(namespace, str) or len(escape_text(namespace)) > NAMESPACE_MAX_LENGTH:
        msg = f"namespace must be a string of at most {NAMESPACE_MAX_LENGTH} characters"
        raise ConfigurationError(msg)
    if namespace.endswith(" "):
        # MySQL's collations ignore trailing spaces, so "a " would share entries with "a".
        msg = f"namespace must not end with a space: {namespace!r}"
        raise ConfigurationError(msg)
    return namespace


def _positive(name: str, value: int | None) -> int | None:
    if value is not None and (not isinstance(value, int) or value <= 0):
        msg = f"{name} must be a positive integer or None, not {value!r}"
        raise ConfigurationError(msg)
    return value


def _positive_duration(ttl: timedelta | float | None) -> timedelta | None:
    if ttl is None:
        return None
    duration = ttl if isinstance(ttl, timedelta) else timedelta(seconds=ttl)
    if duration <= timedelta(0):
        msg = f"ttl must be positive, not {ttl!r}"
        raise ConfigurationError(msg)
    return duration


def _backoff(attempt: int) -> float:
    """Jittered exponential backoff, so that retrying writers do not collide again."""
    return random.uniform(0, RETRY_BASE_DELAY_SECONDS * 2**attempt)  # noqa: S311


def _missing_engine_message(family: str, argument: str, factory: str) -> str:
    return (
        f"this SQLCache has no {family} engine: pass {argument}={factory}(...) "
        f"or a url= to build one from"
    )
