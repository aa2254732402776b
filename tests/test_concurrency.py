"""Many threads, tasks and processes writing the same keys: no error, one whole value each.

Every cache here is built with ``on_error="raise"``: under the default policy a deadlock or a
lock timeout that outlasts the retries would become a silent no-op or miss, and the test
would pass without proving anything.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import pytest
from langchain_core.outputs import Generation
from sqlalchemy import create_engine, func, select

from langchain_sqlcache import SQLCache
from langchain_sqlcache.models import entry_table, generation_table
from tests.conftest import Backend, unique_namespace

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


def plan(writer: int, prompts: Sequence[str]) -> list[str]:
    """The key each round of a writer updates (seeded: the parent knows what children wrote)."""
    rng = random.Random(writer)
    return [rng.choice(prompts) for _ in range(ROUNDS)]


def written(writers: range, prompts: Sequence[str]) -> dict[str, list[list[Generation]]]:
    """Every value written to each key by ``writers``."""
    values: dict[str, list[list[Generation]]] = {prompt: [] for prompt in prompts}
    for writer in writers:
        for round_, prompt in enumerate(plan(writer, prompts)):
            values[prompt].append(value_of(writer, round_))
    return values


def assert_complete(value: Sequence[Generation] | None, candidates: list[list[Generation]]) -> None:
    """The value is, whole and exactly, one of the values written to its key."""
    assert value is not None, "a key that was written reads as a miss"
    assert list(value) in candidates, f"not a value written to this key: {value}"


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


def strict_cache(url: str, namespace: str, **options: Any) -> SQLCache:
    """A cache whose every failure raises, so that no error can pass as a no-op or a miss."""
    return SQLCache(url, namespace=namespace, on_error="raise", **options)


def hammer(
    cache: SQLCache,
    writer: int,
    prompts: Sequence[str],
    values: dict[str, list[list[Generation]]],
) -> int:
    for round_, prompt in enumerate(plan(writer, prompts)):
        cache.update(prompt, LLM, value_of(writer, round_))
        # Another writer may have replaced it since, but only with a whole value of its own.
        assert_complete(cache.lookup(prompt, LLM), values[prompt])
    return writer


@pytest.mark.parametrize("keys", [1, 50], ids=["one-key", "many-keys"])
def test_threads(backend: Backend, keys: int) -> None:
    namespace = unique_namespace()
    cache = strict_cache(backend.url, namespace, pool_size=WORKERS, max_overflow=0)
    prompts = [f"prompt {i}" for i in range(keys)]
    values = written(range(WORKERS), prompts)
    try:
        with ThreadPoolExecutor(WORKERS) as pool:
            done = list(
                pool.map(
                    hammer,
                    [cache] * WORKERS,
                    range(WORKERS),
                    [prompts] * WORKERS,
                    [values] * WORKERS,
                )
            )
        assert sorted(done) == list(range(WORKERS))
        for prompt in prompts:
            assert_complete(cache.lookup(prompt, LLM), values[prompt])
        assert_stored_once(backend, namespace, keys)
        assert cache.stats().failures == 0
    finally:
        cache.clear()
        cache.close()


async def ahammer(
    cache: SQLCache,
    writer: int,
    prompts: Sequence[str],
    values: dict[str, list[list[Generation]]],
) -> int:
    for round_, prompt in enumerate(plan(writer, prompts)):
        await cache.aupdate(prompt, LLM, value_of(writer, round_))
        assert_complete(await cache.alookup(prompt, LLM), values[prompt])
    return writer


@pytest.mark.parametrize("keys", [1, 50], ids=["one-key", "many-keys"])
async def test_tasks(backend: Backend, keys: int) -> None:
    namespace = unique_namespace()
    cache = strict_cache(backend.url, namespace, pool_size=WORKERS, max_overflow=0)
    prompts = [f"prompt {i}" for i in range(keys)]
    values = written(range(WORKERS), prompts)
    try:
        done = await asyncio.gather(*(ahammer(cache, w, prompts, values) for w in range(WORKERS)))
        assert sorted(done) == list(range(WORKERS))
        for prompt in prompts:
            assert_complete(await cache.alookup(prompt, LLM), values[prompt])
        assert_stored_once(backend, namespace, keys)
        assert (await cache.astats()).failures == 0
    finally:
        await cache.aclear()
        await cache.aclose()


PROCESSES, THREADS_PER_PROCESS = 4, 8
SHARED = ["shared"]


def process_worker(url: str, namespace: str, first_writer: int) -> tuple[int, int]:
    """Run in a child process: several threads hammering one key; (writers done, failures)."""
    cache = strict_cache(url, namespace)
    writers = range(first_writer, first_writer + THREADS_PER_PROCESS)
    values = written(range(PROCESSES * THREADS_PER_PROCESS), SHARED)
    try:
        with ThreadPoolExecutor(THREADS_PER_PROCESS) as pool:
            done = list(
                pool.map(
                    hammer,
                    [cache] * len(writers),
                    writers,
                    [SHARED] * len(writers),
                    [values] * len(writers),
                )
            )
        return len(done), cache.stats().failures
    finally:
        cache.close()


def test_processes(backend: Backend) -> None:
    namespace = unique_namespace()
    cache = strict_cache(backend.url, namespace)
    try:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(PROCESSES, mp_context=context) as pool:
            futures = [
                pool.submit(process_worker, backend.url, namespace, THREADS_PER_PROCESS * p)
                for p in range(PROCESSES)
            ]
            results = [f.result(timeout=300) for f in futures]
        assert results == [(THREADS_PER_PROCESS, 0)] * PROCESSES
        values = written(range(PROCESSES * THREADS_PER_PROCESS), SHARED)
        assert_complete(cache.lookup("shared", LLM), values["shared"])
        assert_stored_once(backend, namespace, 1)
    finally:
        cache.clear()
        cache.close()
