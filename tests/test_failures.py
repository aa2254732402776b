"""The failure policy: a cache outage is a slower app, not a broken one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator

import pytest
from langchain_core.outputs import Generation
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import create_async_engine

from langchain_sqlcache import CacheUnavailableError, SchemaError, SQLCache
from langchain_sqlcache import engines as engines_module
from langchain_sqlcache import store as store_module
from langchain_sqlcache.engines import driver_urls
from langchain_sqlcache.errors import is_transient
from tests.conftest import Backend, sync_engine, unique_namespace
from tests.helpers import get, put
from tests.wire import WireTap

LLM = "failure-llm"
VALUE = [Generation(text="kept")]
# Port 9 (discard) on loopback: nothing listens, connections are refused at once.
DEAD = {
    "postgresql": "postgresql://postgres@127.0.0.1:9/test",
    "mysql": "mysql://root@127.0.0.1:9/test",
}


@pytest.fixture
def half_dead(backend: Backend) -> Iterator[SQLCache]:
    """A cache whose sync family works and whose async family's server is down."""
    if backend.name == "sqlite":
        dead_url = "postgresql://postgres@127.0.0.1:9/test"
    else:
        dead_url = DEAD[backend.name]
    live = create_engine(driver_urls(make_url(backend.url))[0])
    dead = create_async_engine(driver_urls(make_url(dead_url))[1])
    cache = SQLCache(engine=live, async_engine=dead, namespace=unique_namespace())
    yield cache
    cache.clear()
    live.dispose()


async def test_warn_turns_an_outage_into_misses_and_no_ops(
    half_dead: SQLCache, caplog: pytest.LogCaptureFixture
) -> None:
    half_dead.update("p", LLM, VALUE)
    with caplog.at_level(logging.WARNING, logger="langchain_sqlcache"):
        for _ in range(3):
            assert await half_dead.alookup("p", LLM) is None
            await half_dead.aupdate("q", LLM, VALUE)
        await half_dead.aclear()
        assert await half_dead.adelete("p", LLM) is False
        assert await half_dead.aprune() == 0
    # Counted, and logged once rather than once per call.
    assert half_dead.stats().failures == 9
    warnings = [r for r in caplog.records if "failed over" in r.getMessage()]
    assert len(warnings) == 1
    # Nothing was lost or written by the failed calls.
    assert half_dead.lookup("p", LLM) == VALUE
    assert half_dead.lookup("q", LLM) is None


async def test_raise_policy_raises_cache_unavailable(backend: Backend) -> None:
    dead = DEAD.get(backend.name, DEAD["postgresql"])
    cache = SQLCache(dead, on_error="raise")
    for call in (
        lambda: cache.lookup("p", LLM),
        lambda: cache.update("p", LLM, VALUE),
        lambda: cache.clear(),
        lambda: cache.stats(),
    ):
        with pytest.raises(CacheUnavailableError, match="unavailable") as raised:
            call()
        assert isinstance(raised.value.__cause__, DBAPIError)
    with pytest.raises(CacheUnavailableError):
        await cache.alookup("p", LLM)
    await cache.aclose()


@pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True)
@pytest.mark.parametrize("on_error", ["warn", "raise"])
async def test_a_server_gone_after_warm_up_follows_the_policy(
    backend: Backend, family: str, on_error: str
) -> None:
    """Pooled connections dropped, new ones refused, then the server back: every path.

    A cache in steady use meets the outage on its pooled connections and then on new
    ones (refused), on lookups, which go straight to the driver, and on updates.
    """
    tap = WireTap(backend.url)
    cache = SQLCache(tap.url, namespace=unique_namespace(), on_error=on_error)  # type: ignore[arg-type]
    try:
        await put(cache, family, "p", LLM, VALUE)
        assert await get(cache, family, "p", LLM) == VALUE
        tap.close()
        for _ in range(2):
            if on_error == "warn":
                assert await get(cache, family, "p", LLM) is None
                await put(cache, family, "q", LLM, VALUE)
            else:
                with pytest.raises(CacheUnavailableError) as raised:
                    await get(cache, family, "p", LLM)
                # The driver's error, as SQLAlchemy's (or as the OSError asyncpg raises).
                assert isinstance(raised.value.__cause__, (DBAPIError, OSError))
                with pytest.raises(CacheUnavailableError):
                    await put(cache, family, "q", LLM, VALUE)
        tap.reopen()
        # The breaker skips the server a moment longer; a probe finds it back within its
        # backoff's cap (2 s).
        assert await eventually_got(cache, family, "p", within=5.0) == VALUE
        assert await get(cache, family, "q", LLM) is None
    finally:
        tap.reopen()
        await cache.aclear()
        await cache.aclose()
        tap.close()


async def eventually_got(cache: SQLCache, family: str, prompt: str, within: float) -> object:
    """The first value a lookup returns within ``within`` seconds (None if none did)."""
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(CacheUnavailableError):
            value = await get(cache, family, prompt, LLM)
            if value is not None or time.monotonic() > deadline:
                return value
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.05)


async def test_stats_raise_under_warn_too() -> None:
    cache = SQLCache(DEAD["postgresql"])
    assert cache.lookup("p", LLM) is None
    with pytest.raises(CacheUnavailableError):
        cache.stats()
    with pytest.raises(CacheUnavailableError):
        await cache.astats()
    await cache.aclose()


async def test_configuration_errors_raise_under_warn(empty_db: str) -> None:
    cache = SQLCache(empty_db, create_tables=False)
    with pytest.raises(SchemaError):
        cache.lookup("p", LLM)
    with pytest.raises(SchemaError):
        await cache.aupdate("p", LLM, VALUE)
    await cache.aclose()


def kill_connections(backend: Backend, database_url: str) -> int:
    """Kill, server-side, every connection to the database but our own."""
    database = make_url(database_url).database
    engine = sync_engine(backend.url)
    with engine.connect() as connection:
        if backend.name == "postgresql":
            killed = connection.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": database},
            ).scalar_one()
        else:
            ids = connection.execute(
                text(
                    "SELECT id FROM information_schema.processlist "
                    "WHERE db = :db AND id <> CONNECTION_ID()"
                ),
                {"db": database},
            ).scalars()
            killed = 0
            for connection_id in list(ids):
                connection.execute(text(f"KILL {int(connection_id)}"))
                killed += 1
    engine.dispose()
    return int(killed)


@pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True)
async def test_killed_connections_are_replaced(backend: Backend, empty_db: str) -> None:
    cache = SQLCache(empty_db, namespace="killed")
    cache.update("p", LLM, VALUE)
    assert await cache.alookup("p", LLM) == VALUE
    for _ in range(3):
        assert kill_connections(backend, empty_db) >= 2
        # The pooled connections are dead; the next operations reconnect and succeed.
        assert cache.lookup("p", LLM) == VALUE
        assert await cache.alookup("p", LLM) == VALUE
        cache.update("p", LLM, VALUE)
        await cache.aupdate("p", LLM, VALUE)
    assert cache.stats().failures == 0
    await cache.aclose()


@pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True)
@pytest.mark.parametrize("idle", [True, False])
async def test_idle_connections_are_pinged_before_use(
    backend: Backend, empty_db: str, idle: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection idle past IDLE_PING_SECONDS is pinged and replaced without a retry.

    Connections just returned are not pinged (one round trip per lookup): killed ones are
    then replaced by the retry, after a backoff; the second case shows it, so the first one
    shows what the ping saves.
    """
    backoffs: list[int] = []
    real_backoff = store_module._backoff

    def counted_backoff(attempt: int) -> float:
        backoffs.append(attempt)
        return real_backoff(attempt)

    monkeypatch.setattr(store_module, "_backoff", counted_backoff)
    cache = SQLCache(empty_db, namespace="idle")
    cache.update("p", LLM, VALUE)
    assert await cache.alookup("p", LLM) == VALUE
    if idle:  # every pooled connection counts as idle
        monkeypatch.setattr(engines_module, "IDLE_PING_SECONDS", 0.0)
    assert kill_connections(backend, empty_db) >= 2
    assert cache.lookup("p", LLM) == VALUE
    assert await cache.alookup("p", LLM) == VALUE
    cache.update("p", LLM, VALUE)
    assert cache.stats().failures == 0
    if idle:
        assert backoffs == []
    else:
        assert backoffs
    await cache.aclose()


def test_transient_errors_are_recognised() -> None:
    class Driver(Exception):
        def __init__(self, *args: object, sqlstate: str | None = None) -> None:
            super().__init__(*args)
            self.sqlstate = sqlstate

    def wrapped(orig: Exception) -> DBAPIError:
        return OperationalError("SELECT 1", {}, orig)

    assert is_transient(wrapped(Driver("deadlock", sqlstate="40P01")))
    # A replica's refusal is not transient: tried once more on a new connection, no more.
    assert not is_transient(wrapped(Driver("read-only", sqlstate="25006")))
    assert not is_transient(wrapped(Driver(1290, "running with the --read-only option")))
    assert is_transient(wrapped(Driver("admin shutdown", sqlstate="57P01")))
    assert is_transient(wrapped(Driver("conn", sqlstate="08006")))
    assert is_transient(wrapped(Driver(1213, "Deadlock found")))
    assert is_transient(wrapped(Driver(2013, "Lost connection")))
    assert is_transient(wrapped(Driver("database is locked")))
    assert is_transient(ConnectionRefusedError())
    # psycopg in pipeline mode (executemany) reports a shutdown met mid-pipeline without a
    # code, raised while handling the AdminShutdown (seen in the restart test).
    pipeline_error = Driver("cannot exit pipeline mode while busy")
    pipeline_error.__context__ = Driver("terminating connection", sqlstate="57P01")
    assert is_transient(wrapped(pipeline_error))
    assert not is_transient(wrapped(Driver("cannot exit pipeline mode while busy")))
    assert not is_transient(wrapped(Driver("syntax", sqlstate="42601")))
    assert not is_transient(wrapped(Driver(1146, "Table doesn't exist")))
    assert not is_transient(wrapped(Driver("no such table: llm_cache_entry")))
    assert not is_transient(ValueError("not a database error"))


async def test_more_callers_than_the_pool_holds_wait_a_bounded_time(backend: Backend) -> None:
    cache = SQLCache(
        backend.url,
        namespace=unique_namespace(),
        pool_size=1,
        max_overflow=0,
        pool_timeout=0.2,
    )
    cache.update("p", LLM, VALUE)
    await cache.aupdate("p", LLM, VALUE)
    assert cache.store.engines is not None
    assert cache.store.async_engines is not None
    # Hold every connection of both families, as callers stuck elsewhere would (MySQL's
    # lookups have a pool of their own).
    held = [cache.store.engines.writer.connect()]
    held_async = [await cache.store.async_engines.writer.connect()]
    if cache.store.engines.reader.pool is not cache.store.engines.writer.pool:
        held.append(cache.store.engines.reader.connect())
        held_async.append(await cache.store.async_engines.reader.connect())
    started = time.perf_counter()
    assert cache.lookup("p", LLM) is None  # waited, then failed over to a miss
    assert await cache.alookup("p", LLM) is None
    waited = time.perf_counter() - started
    assert waited < 10  # bounded: pool_timeout per attempt, a few attempts
    for connection in held:
        connection.close()
    for async_connection in held_async:
        await async_connection.close()
    assert cache.lookup("p", LLM) == VALUE
    assert cache.stats().failures == 2
    cache.clear()
    await cache.aclose()
