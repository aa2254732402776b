"""The floor: SQLCache's lookup sent by hand through the raw drivers, sync and async.

One prepared query on one persistent autocommit connection (psycopg, PyMySQL, sqlite3), and
the same query on a raw async pool (asyncpg, aiomysql, aiosqlite), the rows returned undecoded.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

import aiomysql
import aiosqlite
import asyncpg  # type: ignore[import-untyped]
import psycopg
import pymysql
from sqlalchemy.engine import URL

from bench.backends import Backend
from bench.workload import now_utc

# The lookup SQLCache runs (statements.lookup), written out by hand; {0} and {1} are the
# driver's placeholders. JSON columns come back as the driver delivers them to SQLAlchemy.
LOOKUP_SQL = (
    "SELECT g.generation_type, g.text, g.generation_info, g.message"
    " FROM llm_cache_entry e JOIN llm_cache_generation g ON e.id = g.entry_id"
    " WHERE e.key_hash = {0} AND (e.expires_at IS NULL OR e.expires_at > {1})"
    " ORDER BY g.idx"
)


def sync_floor(backend: Backend) -> tuple[Callable[[str], list[Any]], Callable[[], None]]:
    """The lookup as one prepared query on one persistent connection in autocommit mode."""
    url = backend.url
    if backend.name == "postgresql":
        pg = psycopg.connect(_dsn(url), autocommit=True)
        pg_sql = LOOKUP_SQL.format("%s", "%s")

        def pg_lookup(key_hash: str) -> list[Any]:
            return pg.execute(pg_sql, (key_hash, now_utc()), prepare=True).fetchall()

        return pg_lookup, pg.close
    if backend.name == "mysql":
        my = pymysql.connect(**_mysql_args(url), autocommit=True)
        my_cursor = my.cursor()
        my_sql = LOOKUP_SQL.format("%s", "%s")

        def my_lookup(key_hash: str) -> list[Any]:
            # MySQL keeps naive UTC, as SQLCache writes it.
            my_cursor.execute(my_sql, (key_hash, now_utc().replace(tzinfo=None)))
            return list(my_cursor.fetchall())

        return my_lookup, my.close
    lite = sqlite3.connect(str(url.database), isolation_level=None, check_same_thread=False)
    lite_sql = LOOKUP_SQL.format("?", "?")

    def lite_lookup(key_hash: str) -> list[Any]:
        return lite.execute(lite_sql, (key_hash, _sqlite_time(now_utc()))).fetchall()

    return lite_lookup, lite.close


def _sqlite_time(value: datetime) -> str:
    """SQLAlchemy's SQLite DATETIME text for a UTC instant."""
    return value.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def _dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _mysql_args(url: URL) -> dict[str, Any]:
    return {
        "host": url.host or "127.0.0.1",
        "port": url.port or 3306,
        "user": url.username or "root",
        "password": url.password or "",
        "database": url.database,
        "charset": "utf8mb4",
    }


class AsyncFloor(Protocol):
    """A raw async pool running the lookup."""

    async def lookup(self, key_hash: str) -> list[Any]:
        """The rows of one key."""

    async def close(self) -> None:
        """Close every connection."""


class AsyncpgFloor:
    """asyncpg pool; asyncpg prepares and caches the statement on each connection."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.sql = LOOKUP_SQL.format("$1", "$2")

    @classmethod
    async def open(cls, url: URL, size: int) -> AsyncpgFloor:
        """Open the pool."""

        async def json_codecs(connection: Any) -> None:
            # SQLAlchemy's asyncpg dialect parses json and jsonb as it fetches: so does the floor.
            for name in ("json", "jsonb"):
                await connection.set_type_codec(
                    name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
                )

        async def keep_session(_connection: Any) -> None:
            # asyncpg resets a released connection's session (RESET ALL, ...) with a round
            # trip of its own; SQLCache's pool does not, and neither does the floor.
            return

        pool = await asyncpg.create_pool(
            _dsn(url), min_size=size, max_size=size, init=json_codecs, reset=keep_session
        )
        return cls(pool)

    async def lookup(self, key_hash: str) -> list[Any]:
        """The rows of one key."""
        return list(await self.pool.fetch(self.sql, key_hash, now_utc()))

    async def close(self) -> None:
        """Close every connection."""
        await self.pool.close()


class AiomysqlFloor:
    """aiomysql pool in autocommit mode."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.sql = LOOKUP_SQL.format("%s", "%s")

    @classmethod
    async def open(cls, url: URL, size: int) -> AiomysqlFloor:
        """Open the pool."""
        args = _mysql_args(url)
        args["db"] = args.pop("database")
        pool = await aiomysql.create_pool(minsize=size, maxsize=size, autocommit=True, **args)
        return cls(pool)

    async def lookup(self, key_hash: str) -> list[Any]:
        """The rows of one key."""
        async with self.pool.acquire() as connection, connection.cursor() as cursor:
            await cursor.execute(self.sql, (key_hash, now_utc().replace(tzinfo=None)))
            return list(await cursor.fetchall())

    async def close(self) -> None:
        """Close every connection."""
        self.pool.close()
        await self.pool.wait_closed()


class AiosqliteFloor:
    """A queue of aiosqlite connections (aiosqlite has no pool; each connection is a thread)."""

    def __init__(self, connections: list[aiosqlite.Connection]) -> None:
        self.connections = connections
        self.idle: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        for connection in connections:
            self.idle.put_nowait(connection)
        self.sql = LOOKUP_SQL.format("?", "?")

    @classmethod
    async def open(cls, url: URL, size: int) -> AiosqliteFloor:
        """Open the pool."""
        connections = [
            await aiosqlite.connect(str(url.database), isolation_level=None) for _ in range(size)
        ]
        return cls(connections)

    async def lookup(self, key_hash: str) -> list[Any]:
        """The rows of one key."""
        connection = await self.idle.get()
        try:
            async with connection.execute(self.sql, (key_hash, _sqlite_time(now_utc()))) as rows:
                return list(await rows.fetchall())
        finally:
            self.idle.put_nowait(connection)

    async def close(self) -> None:
        """Close every connection."""
        for connection in self.connections:
            await connection.close()


async def async_floor(backend: Backend, size: int) -> AsyncFloor:
    if backend.name == "postgresql":
        return await AsyncpgFloor.open(backend.url, size)
    if backend.name == "mysql":
        return await AiomysqlFloor.open(backend.url, size)
    return await AiosqliteFloor.open(backend.url, size)
