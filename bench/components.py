"""The parts of a hit, timed one by one, interleaved so that their costs can be subtracted."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from bench.backends import Backend
from bench.floors import async_floor, sync_floor
from bench.latency import _rotated
from bench.plan import FLOOR, HOT_NS, LLM, PROMPT_SIZES, Plan
from bench.results import BackendResult, Stats
from bench.workload import _ns, answer, now_utc, prompt_of
from langchain_sqlcache import SQLCache
from langchain_sqlcache.codec import decode_generations
from langchain_sqlcache.fastpath import DriverQuery, driver_query, fetch_on, lookup_rows
from langchain_sqlcache.sqlalchemy_internals import greenlet_spawn

LOOKUP, HASH, CHECKOUT, HELD, READ, DECODE = (
    "SQLCache.lookup, whole",
    "key hash (codec.entry_key)",
    "pool checkout and return, nothing run (raw_connection, close)",
    "lookup statement on a held DBAPI connection (parameters, execute, fetch)",
    "store.run(lookup_rows): retry wrapper + checkout + statement + return",
    "decode_generations (rows to ChatGeneration)",
)
ALOOKUP, AREAD, AUNSHIELDED, AHELD, AFLOOR = (
    "SQLCache.alookup, whole",
    "store.arun: ensure_future + shield + arun_unshielded",
    "store.arun_unshielded: retry wrapper + greenlet + checkout + statement + return",
    "lookup statement on a held connection, in a greenlet",
    "raw async driver, one connection",
)


def _held_lookup(connection: Any, query: DriverQuery, key_hash: str, now: datetime) -> list[Any]:
    """The lookup statement on a checked-out DBAPI connection, as run_direct runs it."""
    return fetch_on(connection, query, query.parameters({"key_hash": key_hash, "now": now}))


def components(backend: Backend, plan: Plan, result: BackendResult) -> None:
    """Time the parts of a hit separately, interleaved, so that their costs can be subtracted."""
    cache = SQLCache(backend.url, namespace=HOT_NS, on_error="raise")
    hot = [prompt_of(f"hot {i}", PROMPT_SIZES["200 B"]) for i in range(plan.hot_keys)]
    for prompt in hot:
        cache.update(prompt, LLM, answer(1, 1))
    hash_key, run = cache.settings.key_hash, cache.store.run
    keys = {prompt: hash_key(prompt, LLM) for prompt in hot}
    floor_lookup, floor_close = sync_floor(backend)
    engines = cache.store.ready()
    reader = engines.reader
    query = driver_query("lookup", reader.dialect, engines.schema)
    now = now_utc()
    held = reader.raw_connection()
    rows = {prompt: _held_lookup(held, query, keys[prompt], now) for prompt in hot}

    def checkout() -> None:
        reader.raw_connection().close()

    calls: dict[str, Callable[[str], object]] = {
        LOOKUP: lambda prompt: cache.lookup(prompt, LLM),
        HASH: lambda prompt: hash_key(prompt, LLM),
        CHECKOUT: lambda _prompt: checkout(),
        HELD: lambda prompt: _held_lookup(held, query, keys[prompt], now),
        READ: lambda prompt: run(lookup_rows, keys[prompt], now),
        DECODE: lambda prompt: decode_generations(rows[prompt], key_hash=keys[prompt]),
        FLOOR: lambda prompt: floor_lookup(keys[prompt]),
    }
    samples: dict[str, list[int]] = defaultdict(list)
    rng = random.Random(3)
    for n in range(plan.warmup + plan.hits):
        prompt = rng.choice(hot)
        for name, call in _rotated(calls, n):
            elapsed, _ = _ns(lambda: call(prompt))  # noqa: B023
            if n >= plan.warmup:
                samples[name].append(elapsed)
    held.close()
    floor_close()
    cache.close()
    result.components = {name: Stats.of(samples[name]) for name in calls}
    result.async_components = asyncio.run(_async_components(backend, plan, hot))


async def _async_components(backend: Backend, plan: Plan, hot: list[str]) -> dict[str, Stats]:
    cache = SQLCache(backend.url, namespace=HOT_NS, on_error="raise")
    hash_key = cache.settings.key_hash
    arun, arun_unshielded = cache.store.arun, cache.store.arun_unshielded
    keys = {prompt: hash_key(prompt, LLM) for prompt in hot}
    floor = await async_floor(backend, 1)
    await cache.alookup(hot[0], LLM)  # this loop's pool
    engines = await cache.store.aready()
    reader = engines.reader
    query = driver_query("lookup", reader.dialect, engines.schema)
    now = now_utc()
    samples: dict[str, list[int]] = defaultdict(list)
    held = await reader.raw_connection()
    calls: dict[str, Callable[[str], Awaitable[object]]] = {
        ALOOKUP: lambda prompt: cache.alookup(prompt, LLM),
        AREAD: lambda prompt: arun(lookup_rows, keys[prompt], now),
        AUNSHIELDED: lambda prompt: arun_unshielded(lookup_rows, keys[prompt], now),
        AHELD: lambda prompt: greenlet_spawn(_held_lookup, held, query, keys[prompt], now),
        AFLOOR: lambda prompt: floor.lookup(keys[prompt]),
    }
    rng = random.Random(4)
    for n in range(plan.warmup + plan.hits):
        prompt = rng.choice(hot)
        items = list(calls.items())
        shift = n % len(items)
        for name, call in items[shift:] + items[:shift]:
            started = time.perf_counter_ns()
            await call(prompt)
            if n >= plan.warmup:
                samples[name].append(time.perf_counter_ns() - started)
    await greenlet_spawn(held.close)
    await floor.close()
    await cache.aclose()
    return {name: Stats.of(samples[name]) for name in calls}
