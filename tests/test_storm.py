"""Storms: many processes and threads on one key, many writers on many keys; each reports
its figures (run with -s to see them)."""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest
from langchain_core.outputs import Generation

from langchain_sqlcache import SQLCache
from tests.conftest import Backend, unique_namespace
from tests.test_concurrency import assert_stored_once, assert_whole, value_of

# The README's run storms at full size; the matrix's runs on other Pythons and the floors
# (noxfile.py) set SQLCACHE_TEST_STORM_SCALE to storm smaller, with the same workers: what
# they check is the interpreter and the versions, and the full storm costs ~100 s per run.
SCALE = float(os.environ.get("SQLCACHE_TEST_STORM_SCALE", "1"))
PROCESSES, THREADS, UPDATES = 8, 16, max(2, round(50 * SCALE))
WRITERS, KEYS = 32, max(10, round(1000 * SCALE))
LLM = "storm-llm"


def storm_process(url: str, namespace: str, process: int) -> tuple[int, int]:
    """In a child: THREADS threads x UPDATES updates of one key; returns (updates, failures)."""
    # 8 processes x 8 connections stays under Postgres' default max_connections (100): the
    # 16 threads of a process share its pool and wait their turn, as in a real deployment.
    # A storm queues 16 threads on 8 connections for one row: the wait for a connection is
    # part of the test, not an outage, so it gets SQLAlchemy's 30 s rather than the cache's
    # default pool_timeout (the statement timeout, 5 s), which a loaded CI machine exceeds.
    cache = SQLCache(
        url, namespace=namespace, on_error="raise", pool_size=8, max_overflow=0, pool_timeout=30
    )

    def writer(thread: int) -> int:
        for update in range(UPDATES):
            cache.update("the key", LLM, value_of(process * THREADS + thread, update))
        return UPDATES

    try:
        with ThreadPoolExecutor(THREADS) as pool:
            done = sum(pool.map(writer, range(THREADS)))
        return done, cache.stats().failures
    finally:
        cache.close()


@pytest.mark.slow
def test_same_key_storm(backend: Backend) -> None:
    namespace = unique_namespace()
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(PROCESSES, mp_context=context) as pool:
        results = list(pool.map(storm_process, [backend.url] * PROCESSES,
                                [namespace] * PROCESSES, range(PROCESSES)))  # fmt: skip
    elapsed = time.perf_counter() - started
    updates = sum(done for done, _ in results)
    assert updates == PROCESSES * THREADS * UPDATES
    assert sum(failures for _, failures in results) == 0
    cache = SQLCache(backend.url, namespace=namespace)
    assert_whole(cache.lookup("the key", LLM))
    assert_stored_once(backend, namespace, 1)
    cache.clear()
    cache.close()
    rate = updates / elapsed
    print(f"\n{backend.name}: same-key storm {PROCESSES}x{THREADS}x{UPDATES} = {updates} "
          f"updates, 0 errors, one whole value, {elapsed:.1f} s ({rate:.0f}/s)")  # fmt: skip


@pytest.mark.slow
def test_many_writers_lose_nothing(backend: Backend) -> None:
    namespace = unique_namespace()
    cache = SQLCache(backend.url, namespace=namespace, on_error="raise", pool_size=WRITERS)
    started = time.perf_counter()

    def writer(number: int) -> int:
        for key in range(number, KEYS * WRITERS, WRITERS):
            cache.update(f"key {key}", LLM, [Generation(text=f"value {key}")])
        return KEYS

    with ThreadPoolExecutor(WRITERS) as pool:
        written = sum(pool.map(writer, range(WRITERS)))
    elapsed = time.perf_counter() - started
    assert written == WRITERS * KEYS
    assert cache.stats().entries == WRITERS * KEYS
    for key in range(0, WRITERS * KEYS, 997):
        assert cache.lookup(f"key {key}", LLM) == [Generation(text=f"value {key}")]
    cache.clear()
    cache.close()
    print(f"\n{backend.name}: {WRITERS} writers x {KEYS} keys = {written} entries, 0 lost, "
          f"{elapsed:.1f} s ({written / elapsed:.0f}/s)")  # fmt: skip
