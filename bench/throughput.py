"""Async throughput: hits/s at 1, 16 and 64 tasks, SQLCache beside a raw async pool."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from bench.backends import Backend
from bench.floors import async_floor
from bench.peers import langchain_caches
from bench.plan import (
    CONCURRENCY,
    FLOOR,
    HOT_NS,
    LC_CACHE,
    LLM,
    POOL_CAPACITY,
    PROMPT_SIZES,
    SQLCACHE,
    SQLCACHE_POOLED,
    Plan,
)
from bench.results import BackendResult
from bench.workload import prompt_of
from langchain_sqlcache import SQLCache


def async_throughput(backend: Backend, plan: Plan, result: BackendResult) -> None:
    result.throughput = asyncio.run(_async_throughput(backend, plan, result))


async def _async_throughput(
    backend: Backend, plan: Plan, result: BackendResult
) -> dict[str, dict[int, float]]:
    cache = SQLCache(backend.url, namespace=HOT_NS, on_error="raise")
    result.pool = _pool_of(cache)
    # SQLCache with a pool as large as the raw one, unless that is already what it builds.
    pooled = (
        None
        if result.pool == f"pool_size={POOL_CAPACITY}, max_overflow=0"
        else SQLCache(
            backend.url,
            namespace=HOT_NS,
            on_error="raise",
            pool_size=POOL_CAPACITY,
            max_overflow=0,
        )
    )
    hot = [prompt_of(f"hot {i}", PROMPT_SIZES["200 B"]) for i in range(plan.hot_keys)]
    hash_key = cache.settings.key_hash
    keys = {prompt: hash_key(prompt, LLM) for prompt in hot}
    floor = await async_floor(backend, POOL_CAPACITY)
    peers = {
        name: peer
        for name, peer in langchain_caches(backend, BackendResult(backend.name)).items()
        if name == LC_CACHE
    }
    subjects: dict[str, Callable[[str], Awaitable[object]]] = {
        SQLCACHE: lambda prompt: cache.alookup(prompt, LLM),
        FLOOR: lambda prompt: floor.lookup(keys[prompt]),
        **{name: _alookup_of(peer) for name, peer in peers.items()},
    }
    if pooled is not None:
        subjects[SQLCACHE_POOLED] = lambda prompt: pooled.alookup(prompt, LLM)
    best: dict[str, dict[int, float]] = defaultdict(dict)
    for call in subjects.values():  # fill the pools and the statement caches
        await _rate(call, hot, max(CONCURRENCY), max(CONCURRENCY) * 4)
    for round_ in range(plan.rounds):
        for tasks in CONCURRENCY:
            items = list(subjects.items())
            shift = round_ % len(items)
            for name, call in items[shift:] + items[:shift]:
                rate = await _rate(call, hot, tasks, plan.async_ops)
                best[name][tasks] = max(rate, best[name].get(tasks, 0.0))
    await floor.close()
    await cache.aclose()
    if pooled is not None:
        await pooled.aclose()
    for peer in peers.values():
        peer.engine.dispose()
    return dict(best)


def _pool_of(cache: SQLCache) -> str:
    """The pool settings of the async engine a cache built."""
    engines = cache.store.async_engines
    pool: Any = engines.reader.sync_engine.pool if engines is not None else None
    size = pool.size() if hasattr(pool, "size") else "?"
    return f"pool_size={size}, max_overflow={getattr(pool, '_max_overflow', '?')}"


def _alookup_of(peer: Any) -> Callable[[str], Awaitable[object]]:
    return lambda prompt: peer.alookup(prompt, LLM)


async def _rate(
    call: Callable[[str], Awaitable[object]], prompts: list[str], tasks: int, ops: int
) -> float:
    """Hits per second of ``tasks`` tasks sharing ``ops`` lookups."""
    per_task = max(1, ops // tasks)

    async def worker(offset: int) -> int:
        misses = 0
        for n in range(per_task):
            if not await call(prompts[(offset * 7919 + n * 31) % len(prompts)]):
                misses += 1
        return misses

    started = time.perf_counter()
    misses = await asyncio.gather(*(worker(w) for w in range(tasks)))
    elapsed = time.perf_counter() - started
    if any(misses):
        msg = f"{sum(misses)} lookups of held keys missed"
        raise RuntimeError(msg)
    return per_task * tasks / elapsed
