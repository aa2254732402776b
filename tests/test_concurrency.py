"""Many threads, tasks and processes writing the same keys: no error, one whole value each."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest
from langchain_core.outputs import Generation
from sqlalchemy import create_engine, func, select

from langchain_sqlcache import SQLCache
from langchain_sqlcache.models import entry_table, generation_table
from tests.conftest import Backend

WORKERS = 32
ROUNDS = 10
LLM = "concurrency-llm"


def value_of(writer: int, round_: int) -> list[Generation]:
    """A value whose every generation names its writer, with 1 to 4 generations."""
    size = 1 + (writer + round_) % 4
    return [Generation(text=f"{writer}/{round_}/{i}/{size}") for i in range(size)]


def assert_whole(value: Sequence[Generation] | None) -> None:
    """A value written by exactly one writer, with all of its generations, in order."""
    assert value is not None
    owners = {g.text.rsplit("/", 2)[0] for g in value}
    assert len(owners) == 1, f"generations of several writers mixed: {value}"
    size = int(value[0].text.rsplit("/", 1)[1])
    assert [g.text.split("/")[2] for g in value] == [str(i) for i in range(size)]


def assert_stored_once(backend: Backend, namespace: str, keys: int) -> None:
    engine = create_engine(backend.sync_url)
    try:
        with engine.connect() as connection:
            entries = connection.execute(
                select(func.count()).where(entry_table.c.namespace == namespace)
            ).scalar_one()
            orphans = connection.execute(
                select(func.count())
                .select_from(generation_table)
                .where(generation_table.c.entry_id.not_in(select(entry_table.c.id)))
            ).scalar_one()
    finally:
        engine.dispose()
    assert entries == keys
    assert orphans == 0


def hammer(cache: SQLCache, writer: int, prompts: Sequence[str]) -> int:
    rng = random.Random(writer)
    for round_ in range(ROUNDS):
        prompt = rng.choice(prompts)
        cache.update(prompt, LLM, value_of(writer, round_))
        found = cache.lookup(prompt, LLM)
        assert_whole(found)
    return writer


@pytest.mark.parametrize("keys", [1, 50], ids=["one-key", "many-keys"])
def test_threads(backend: Backend, keys: int) -> None:
    namespace = f"threads-{keys}-{threading.get_ident()}"
    cache = SQLCache(backend.url, namespace=namespace, pool_size=WORKERS, max_overflow=0)
    prompts = [f"prompt {i}" for i in range(keys)]
    try:
        cache.clear()
        with ThreadPoolExecutor(WORKERS) as pool:
            done = list(pool.map(hammer, [cache] * WORKERS, range(WORKERS), [prompts] * WORKERS))
        assert sorted(done) == list(range(WORKERS))
        for prompt in prompts:
            assert_whole(cache.lookup(prompt, LLM))
        assert_stored_once(backend, namespace, keys)
    finally:
        cache.clear()
        cache.close()


async def ahammer(cache: SQLCache, writer: int, prompts: Sequence[str]) -> int:
    rng = random.Random(writer)
    for round_ in range(ROUNDS):
        prompt = rng.choice(prompts)
        await cache.aupdate(prompt, LLM, value_of(writer, round_))
        assert_whole(await cache.alookup(prompt, LLM))
    return writer


@pytest.mark.parametrize("keys", [1, 50], ids=["one-key", "many-keys"])
async def test_tasks(backend: Backend, keys: int) -> None:
    namespace = f"tasks-{keys}"
    cache = SQLCache(backend.url, namespace=namespace, pool_size=WORKERS, max_overflow=0)
    prompts = [f"prompt {i}" for i in range(keys)]
    try:
        await cache.aclear()
        done = await asyncio.gather(*(ahammer(cache, w, prompts) for w in range(WORKERS)))
        assert sorted(done) == list(range(WORKERS))
        for prompt in prompts:
            assert_whole(await cache.alookup(prompt, LLM))
        assert_stored_once(backend, namespace, keys)
    finally:
        await cache.aclear()
        await cache.aclose()


def process_worker(url: str, namespace: str, first_writer: int) -> int:
    """Run in a child process: several threads hammering one key."""
    cache = SQLCache(url, namespace=namespace)
    try:
        with ThreadPoolExecutor(8) as pool:
            writers = range(first_writer, first_writer + 8)
            return len(list(pool.map(hammer, [cache] * 8, writers, [["shared"]] * 8)))
    finally:
        cache.close()


def test_processes(backend: Backend) -> None:
    namespace = "processes"
    cache = SQLCache(backend.url, namespace=namespace)
    try:
        cache.clear()
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(4, mp_context=context) as pool:
            futures = [pool.submit(process_worker, backend.url, namespace, 8 * p) for p in range(4)]
            assert [f.result(timeout=300) for f in futures] == [8, 8, 8, 8]
        assert_whole(cache.lookup("shared", LLM))
        assert_stored_once(backend, namespace, 1)
    finally:
        cache.clear()
        cache.close()
