"""SQLCache: LangChain's LLM cache in a relational database, sync and native async."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Concatenate, ParamSpec

from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from langchain_sqlcache.codec import decode_generations, encode_generations, entry_key, escape_text
from langchain_sqlcache.engines import EnginePair, build_pair, given_pair, resolve_url
from langchain_sqlcache.errors import ConfigurationError, MissingEngineError, is_retryable
from langchain_sqlcache.migrations import ensure_schema
from langchain_sqlcache.models import NAMESPACE_MAX_LENGTH
from langchain_sqlcache.statements import clear_namespace, lookup_rows, write_value

P = ParamSpec("P")

# A write that loses a deadlock or a serialization check is retried whole, a few times.
WRITE_ATTEMPTS = 5
RETRY_BASE_DELAY_SECONDS = 0.01


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
        **engine_kwargs: Any,
    ) -> None:
        if not isinstance(namespace, str) or len(escape_text(namespace)) > NAMESPACE_MAX_LENGTH:
            msg = f"namespace must be a string of at most {NAMESPACE_MAX_LENGTH} characters"
            raise ConfigurationError(msg)
        if namespace.endswith(" "):
            # MySQL's collations ignore trailing spaces, so "a " would share entries with "a".
            msg = f"namespace must not end with a space: {namespace!r}"
            raise ConfigurationError(msg)
        if url is None and engine is None and async_engine is None:
            url = resolve_url(None)
        if url is None and engine_kwargs:
            msg = f"engine options {sorted(engine_kwargs)} need a url to build engines from"
            raise ConfigurationError(msg)
        self.namespace = namespace
        self.schema = schema
        self.create_tables = create_tables
        self._engines: EnginePair[Engine] | None = None
        self._async_engines: EnginePair[AsyncEngine] | None = None
        parsed = resolve_url(url) if url is not None else None
        self._url = parsed
        if engine is not None:
            self._engines = given_pair(engine, schema)
        elif parsed is not None:
            self._engines = build_pair(create_engine, parsed, engine_kwargs, schema)
        if async_engine is not None:
            self._async_engines = given_pair(async_engine, schema)
        elif parsed is not None:
            self._async_engines = build_pair(create_async_engine, parsed, engine_kwargs, schema)
        self._escaped_namespace = escape_text(namespace)
        self._ready_lock = threading.Lock()
        self._engines_ready = False
        self._async_engines_ready = False

    # -- the BaseCache contract ------------------------------------------------------------

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """Return the cached generations for ``prompt`` and ``llm_string``, or None."""
        key_hash = self._key_hash(prompt, llm_string)
        with self._ready_engines().reader.connect() as connection:
            rows = lookup_rows(connection, key_hash)
        return decode_generations(rows, key_hash=key_hash)

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """Async :meth:`lookup`, on the async engine."""
        key_hash = self._key_hash(prompt, llm_string)
        async with (await self._ready_async_engines()).reader.connect() as connection:
            rows = await connection.run_sync(lookup_rows, key_hash)
        return decode_generations(rows, key_hash=key_hash)

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Store ``return_val``, replacing the key's whole previous value atomically.

        An empty ``return_val`` deletes the entry: an empty value is not an answer a model
        can return, so the next lookup is a miss.

        Raises:
            TypeError: ``return_val`` holds something other than a Generation (nothing is
                written).

        """
        entry_row, generation_rows = self._encode(prompt, llm_string, return_val)
        self._write(write_value, entry_row, generation_rows)

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Async :meth:`update`, on the async engine."""
        entry_row, generation_rows = self._encode(prompt, llm_string, return_val)
        await self._awrite(write_value, entry_row, generation_rows)

    def clear(self, **kwargs: Any) -> None:
        """Delete every entry of this cache's namespace; other namespaces are kept."""
        _no_options(kwargs)
        self._write(clear_namespace, self._escaped_namespace)

    async def aclear(self, **kwargs: Any) -> None:
        """Async :meth:`clear`, on the async engine."""
        _no_options(kwargs)
        await self._awrite(clear_namespace, self._escaped_namespace)

    def close(self) -> None:
        """Dispose of the sync engines this cache built (an engine passed in stays open)."""
        for engine in self._engines.owned if self._engines else ():
            engine.dispose()

    async def aclose(self) -> None:
        """Dispose of every engine this cache built (engines passed in stay open)."""
        for engine in self._async_engines.owned if self._async_engines else ():
            await engine.dispose()
        self.close()

    # -- shared by the sync and async paths ------------------------------------------------

    def _key_hash(self, prompt: str, llm_string: str) -> str:
        return entry_key(self.namespace, prompt, llm_string)

    def _encode(
        self, prompt: str, llm_string: str, return_val: Sequence[Any]
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        generation_rows = encode_generations(return_val)
        entry_row = {
            "key_hash": self._key_hash(prompt, llm_string),
            "namespace": self._escaped_namespace,
            "prompt": escape_text(prompt),
            "llm_string": escape_text(llm_string),
        }
        return entry_row, generation_rows

    def _ready_engines(self) -> EnginePair[Engine]:
        if self._engines is None:
            raise MissingEngineError(_missing_engine_message("sync", "engine", "create_engine"))
        if not self._engines_ready:
            with self._ready_lock:
                if not self._engines_ready:
                    with self._engines.writer.connect() as connection:
                        ensure_schema(
                            connection, self.schema, create=self.create_tables, url=self._url
                        )
                    self._engines_ready = True
        return self._engines

    async def _ready_async_engines(self) -> EnginePair[AsyncEngine]:
        if self._async_engines is None:
            raise MissingEngineError(
                _missing_engine_message("async", "async_engine", "create_async_engine")
            )
        if not self._async_engines_ready:
            # Tasks that race here each run the check (the migration itself serializes on a
            # database lock); no lock is held across an await, so the cache stays usable from
            # successive event loops.
            async with self._async_engines.writer.connect() as connection:
                await connection.run_sync(
                    ensure_schema, self.schema, create=self.create_tables, url=self._url
                )
            self._async_engines_ready = True
        return self._async_engines

    def _write(
        self,
        operation: Callable[Concatenate[Connection, P], None],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> None:
        engine = self._ready_engines().writer
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                with engine.begin() as connection:
                    operation(connection, *args, **kwargs)
                return
            except DBAPIError as exc:
                if attempt == WRITE_ATTEMPTS or not is_retryable(exc):
                    raise
            time.sleep(_backoff(attempt))

    async def _awrite(
        self,
        operation: Callable[Concatenate[Connection, P], None],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> None:
        engine = (await self._ready_async_engines()).writer
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                async with engine.begin() as connection:
                    await connection.run_sync(operation, *args, **kwargs)
                return
            except DBAPIError as exc:
                if attempt == WRITE_ATTEMPTS or not is_retryable(exc):
                    raise
            await asyncio.sleep(_backoff(attempt))


def _backoff(attempt: int) -> float:
    """Jittered exponential backoff, so that retrying writers do not collide again."""
    return random.uniform(0, RETRY_BASE_DELAY_SECONDS * 2**attempt)  # noqa: S311


def _no_options(kwargs: dict[str, Any]) -> None:
    if kwargs:
        msg = f"clear() got unexpected keyword arguments: {', '.join(sorted(kwargs))}"
        raise TypeError(msg)


def _missing_engine_message(family: str, argument: str, factory: str) -> str:
    return (
        f"this SQLCache has no {family} engine: pass {argument}={factory}(...) "
        f"or a url= to build one from"
    )
