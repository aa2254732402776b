"""Outages cost microseconds: a hung server, a refused port, and the server's return.

On Postgres and MySQL/MariaDB, each through both of its drivers (the ``family`` fixture:
psycopg or PyMySQL for sync, asyncpg or aiomysql for async), with the default timeouts:

- a server that accepts connections and never answers (tests.servers.Tarpit), and a port
  with nothing listening: the first operation returns within FIRST_OPERATION_BOUND, a miss
  or a no-op under on_error="warn"; each later one within LATER_OPERATION_BOUND while the
  server stays down (the circuit breaker remembers the outage);
- a proxy in front of the real server (tests.wire.WireTap) that first hangs or refuses,
  then forwards: operations succeed again within RECOVERY_BOUND, on the same cache.

The figures are printed (``pytest -s tests/test_outages.py``); the bounds are generous, on
purpose: they tell a hang or a per-call cost from a bounded one, not a fast machine from a
slow one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.outputs import Generation
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from langchain_sqlcache import SQLCache
from tests.conftest import Backend, unique_namespace
from tests.helpers import get, put
from tests.servers import refused_port, tarpit
from tests.wire import WireTap

servers = pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True)

LLM = "outage-llm"
VALUE = [Generation(text="kept")]
FIRST_OPERATION_BOUND = 5.0
LATER_OPERATION_BOUND = 0.005
LATER_OPERATIONS = 20
RECOVERY_BOUND = 10.0
OUTAGES = ["tarpit", "refused"]


@contextlib.contextmanager
def dead_server(backend: Backend, outage: str) -> Iterator[URL]:
    """The backend's URL pointed at a hung server or at a port that refuses connections."""
    if outage == "refused":
        yield make_url(backend.url).set(host="127.0.0.1", port=refused_port())
        return
    with tarpit() as server:
        yield make_url(backend.url).set(host="127.0.0.1", port=server.port)


def driver(backend: Backend, family: str) -> str:
    drivers = {"postgresql": ("psycopg", "asyncpg"), "mysql": ("pymysql", "aiomysql")}
    return drivers[backend.name][family == "async"]


async def timed_miss(cache: SQLCache, family: str) -> float:
    """The seconds a lookup took; it must be a miss."""
    started = time.perf_counter()
    assert await get(cache, family, "p", LLM) is None
    return time.perf_counter() - started


async def timed_no_op(cache: SQLCache, family: str) -> float:
    """The seconds an update took; it must not raise."""
    started = time.perf_counter()
    await put(cache, family, "q", LLM, VALUE)
    return time.perf_counter() - started


@servers
@pytest.mark.parametrize("outage", OUTAGES)
async def test_the_first_operation_against_a_dead_server_is_bounded(
    backend: Backend, family: str, outage: str
) -> None:
    with dead_server(backend, outage) as url:
        cache = SQLCache(url, namespace=unique_namespace())
        try:
            lookup = await timed_miss(cache, family)
            update = await timed_no_op(cache, family)
        finally:
            await cache.aclose()
    print(
        f"\n{outage} {driver(backend, family)}: first lookup {lookup * 1000:.0f} ms, "
        f"first update {update * 1000:.0f} ms"
    )
    assert lookup < FIRST_OPERATION_BOUND
    assert update < FIRST_OPERATION_BOUND


@servers
@pytest.mark.parametrize("outage", OUTAGES)
async def test_later_operations_cost_microseconds_while_the_server_is_down(
    backend: Backend, family: str, outage: str
) -> None:
    with dead_server(backend, outage) as url:
        cache = SQLCache(url, namespace=unique_namespace())
        lookups: list[float] = []
        updates: list[float] = []
        try:
            first = await timed_miss(cache, family)
            # Checked as they go: without a breaker each costs what the first did.
            for _ in range(LATER_OPERATIONS):
                lookups.append(await timed_miss(cache, family))
                updates.append(await timed_no_op(cache, family))
                if len(over_the_bound(lookups + updates)) > 2:
                    break
        finally:
            await cache.aclose()
    print(
        f"\n{outage} {driver(backend, family)}: first {first * 1000:.0f} ms, then "
        f"{len(lookups)} lookups max {max(lookups) * 1e6:.0f} us, "
        f"updates max {max(updates) * 1e6:.0f} us"
    )
    # One hiccup each (a garbage collection, the scheduler of 2 shared cores: 9.8 ms and
    # 112 ms were each seen once) is let through; a cost per operation (a connect, a timeout,
    # a retry) shows in every one of them.
    for timings in (lookups, updates):
        assert len(timings) == LATER_OPERATIONS
        assert len(over_the_bound(timings)) <= 1, [f"{t * 1e3:.2f} ms" for t in timings]


def over_the_bound(timings: list[float]) -> list[float]:
    return [seconds for seconds in timings if seconds >= LATER_OPERATION_BOUND]


@servers
@pytest.mark.parametrize("outage", OUTAGES)
async def test_operations_succeed_again_when_the_server_returns(
    backend: Backend, family: str, outage: str
) -> None:
    """The same cache, without a restart, serves again once the server answers."""
    tap = WireTap(backend.url)
    if outage == "tarpit":
        tap.tarpit = True
    else:
        tap.close()
    cache = SQLCache(tap.url, namespace=unique_namespace())
    try:
        assert await get(cache, family, "p", LLM) is None
        await put(cache, family, "lost", LLM, VALUE)  # a no-op: the server is down
        if outage == "tarpit":
            tap.tarpit = False
        else:
            tap.reopen()
        back = time.perf_counter()
        while True:
            await put(cache, family, "p", LLM, VALUE)
            if await get(cache, family, "p", LLM) == VALUE:
                break
            assert time.perf_counter() - back < RECOVERY_BOUND
            time.sleep(0.01)
        recovered = time.perf_counter() - back
        print(
            f"\n{outage} {driver(backend, family)}: serving again {recovered * 1000:.0f} ms later"
        )
        assert await get(cache, family, "lost", LLM) is None
    finally:
        tap.tarpit = False
        tap.reopen()
        await cache.aclear()
        await cache.aclose()
        tap.close()


SETTINGS = {
    "postgresql": "SELECT current_setting('statement_timeout')",
    "mysql": "SELECT @@innodb_lock_wait_timeout, @@lock_wait_timeout, @@max_statement_time",
}
EXPECTED = {"postgresql": ("1500ms",), "mysql": (2, 2, 1.5)}
SLEEP = {"postgresql": "SELECT pg_sleep(3)", "mysql": "SELECT SLEEP(3)"}


@servers
async def test_the_server_bounds_each_statement(backend: Backend, family: str) -> None:
    """Both engines of a family carry the statement timeout, and the server enforces it."""
    cache = SQLCache(backend.url, namespace=unique_namespace(), statement_timeout=1.5)
    try:
        if family == "sync":
            sync_pair = cache.store.ready()
            engines = [sync_pair.writer, sync_pair.reader]
        else:
            async_pair = await cache.store.aready()
            engines = [async_pair.writer.sync_engine, async_pair.reader.sync_engine]
        for engine in engines:
            settings = await run_on(engine, family, SETTINGS[backend.name])
            assert tuple(settings) == EXPECTED[backend.name]
            # The server cancels the statement (Postgres raises, MariaDB's SLEEP returns 1).
            started = time.perf_counter()
            with contextlib.suppress(DBAPIError):
                await run_on(engine, family, SLEEP[backend.name])
            assert time.perf_counter() - started < 2.5
            if engine.dialect.driver == "pymysql":
                # The handshake read under the connect timeout, later reads under this one.
                with engine.connect() as connection:
                    driver_connection = connection.connection.driver_connection
                    assert getattr(driver_connection, "_read_timeout", None) == 2.5
    finally:
        await cache.aclose()


async def run_on(engine: Engine, family: str, statement: str) -> tuple[Any, ...]:
    """Run one statement on a sync engine, or on the async engine whose sync facade it is."""
    if family == "sync":
        with engine.connect() as connection:
            row = connection.execute(text(statement)).one()
    else:
        async with AsyncEngine(engine).connect() as async_connection:
            row = (await async_connection.execute(text(statement))).one()
    return tuple(row)


@servers
async def test_a_server_that_stops_answering_mid_statement_costs_the_read_timeout(
    backend: Backend,
) -> None:
    """asyncpg (command_timeout) and PyMySQL (read_timeout, once the handshake is done).

    psycopg and aiomysql have no client-side bound on a statement: against a server whose
    kernel still acknowledges (a frozen process) only the async path's own deadline, or
    none, stops them; Postgres' statement_timeout and MariaDB's max_statement_time cover a
    server that runs but is slow.
    """
    family = "async" if backend.name == "postgresql" else "sync"  # asyncpg, PyMySQL
    tap = WireTap(backend.url)
    cache = SQLCache(tap.url, namespace=unique_namespace(), statement_timeout=1.0)
    try:
        await put(cache, family, "p", LLM, VALUE)
        assert await get(cache, family, "p", LLM) == VALUE
        tap.stalled = True
        started = time.perf_counter()
        assert await get(cache, family, "p", LLM) is None
        stalled = time.perf_counter() - started
        print(
            f"\nstalled {driver(backend, family)}: a lookup gave up after {stalled * 1000:.0f} ms"
        )
        # The read timeout (statement_timeout + 1 s), and the connect timeouts of retries
        # against the same stalled proxy: bounded, where it used to be forever.
        assert stalled < 30
        tap.stalled = False
    finally:
        tap.stalled = False
        await cache.aclear()
        await cache.aclose()
        tap.close()


@servers
async def test_the_async_deadline_bounds_drivers_without_a_read_timeout(backend: Backend) -> None:
    """aiomysql and async psycopg have no read timeout: the async path's deadline (connect +
    statement timeout) bounds a lookup against a server that stops answering mid-statement;
    the connection it gave up on is thrown away, and the cache serves again once the
    server answers."""
    tap = WireTap(backend.url)
    url = tap.url
    if backend.name == "postgresql":  # asyncpg bounds itself (command_timeout)
        url = url.set(drivername="postgresql+psycopg_async")
    cache = SQLCache(url, namespace=unique_namespace(), statement_timeout=1.0)
    try:
        await put(cache, "async", "p", LLM, VALUE)
        assert await get(cache, "async", "p", LLM) == VALUE
        tap.stalled = True
        started = time.perf_counter()
        assert await get(cache, "async", "p", LLM) is None
        stalled = time.perf_counter() - started
        print(f"\nstalled async {url.drivername}: a lookup gave up after {stalled * 1000:.0f} ms")
        assert stalled < 30
        tap.stalled = False
        deadline = time.monotonic() + RECOVERY_BOUND
        while await get(cache, "async", "p", LLM) != VALUE:
            assert time.monotonic() < deadline, "the cache did not serve again"
            await asyncio.sleep(0.05)
        assert (await cache.astats()).failures_by_kind.get("timeout", 0) >= 1
    finally:
        tap.stalled = False
        await cache.aclear()
        await cache.aclose()
        tap.close()
