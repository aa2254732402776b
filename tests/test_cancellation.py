"""Cancelled callers leave no connection checked out, no open transaction, no half value."""

from __future__ import annotations

import asyncio
import gc
import random

from langchain_core.outputs import Generation
from sqlalchemy import text

from langchain_sqlcache import SQLCache
from tests.conftest import Backend, sync_engine, unique_namespace

CANCELLATIONS_WANTED = 100
OPERATIONS = 1000
LLM = "cancel-llm"


def value_of(writer: int, size: int) -> list[Generation]:
    return [Generation(text=f"{writer}/{i}/{size}") for i in range(size)]


def open_transactions(backend: Backend, database: str | None) -> int:
    """Server-side sessions of this database that sit inside a transaction."""
    if backend.name == "sqlite":
        return 0
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = :db "
        "AND state LIKE 'idle in transaction%'"
        if backend.name == "postgresql"
        else "SELECT count(*) FROM information_schema.innodb_trx t JOIN "
        "information_schema.processlist p ON p.id = t.trx_mysql_thread_id WHERE p.db = :db"
    )
    engine = sync_engine(backend.url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text(query), {"db": database}).scalar_one())
    finally:
        engine.dispose()


async def test_random_cancellations(empty_db: str, backend: Backend) -> None:
    cache = SQLCache(empty_db, namespace="cancel", pool_size=5, max_overflow=5)
    await cache.aupdate("warm", LLM, value_of(0, 1))
    rng = random.Random(20261126)
    cancelled = 0
    for operation in range(OPERATIONS):
        key = f"p{rng.randrange(20)}"
        if rng.random() < 0.5:
            task = asyncio.ensure_future(cache.alookup(key, LLM))
        else:
            task = asyncio.ensure_future(
                cache.aupdate(key, LLM, value_of(operation, rng.randrange(1, 5)))
            )
        # Cancel after a random number of event-loop turns (not a wall-clock delay), so
        # that cancellations land mid-flight however fast the database answers.
        for _ in range(rng.randrange(300)):
            await asyncio.sleep(0)
        if not task.done():
            task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            cancelled += 1
    await asyncio.gather(*cache.store.background, return_exceptions=True)
    assert cache.store.async_engines is not None
    for engine in (cache.store.async_engines.writer, cache.store.async_engines.reader):
        assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    print(f"{backend.name}: {cancelled} of {OPERATIONS} operations cancelled")
    assert cancelled >= CANCELLATIONS_WANTED
    for k in range(20):  # every value is whole: one writer's generations, all of them
        value = await cache.alookup(f"p{k}", LLM)
        if value is not None:
            writer, _, size = value[0].text.split("/")
            assert [g.text for g in value] == [f"{writer}/{i}/{size}" for i in range(int(size))]
    assert (await cache.astats()).failures == 0
    await cache.aclose()
    from sqlalchemy.engine import make_url

    assert open_transactions(backend, make_url(empty_db).database) == 0


# Each loop's pooled connections must be closed by that loop: a driver's finalizer running
# after its loop closed reports an error, which pytest turns into a failure here.
async def test_the_same_cache_in_successive_event_loops(backend: Backend) -> None:
    cache = SQLCache(backend.url, namespace=unique_namespace())

    async def use(i: int) -> None:
        await cache.aupdate(f"p{i}", LLM, value_of(i, 1))
        assert await cache.alookup(f"p{i}", LLM) == value_of(i, 1)

    await use(0)  # this test's loop
    for i in range(1, 3):  # and brand new ones, in a thread so that asyncio.run is allowed
        await asyncio.to_thread(asyncio.run, use(i))
    await cache.aclear()
    await cache.aclose()
    gc.collect()  # a connection left to the garbage collector would report its error here
