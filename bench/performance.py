"""SQLCache against the raw-driver floor and LangChain's SQLAlchemy caches, on three backends.

Run: .venv/bin/python bench/performance.py [--quick] [--backends sqlite,postgresql,mysql]
     [--sizes 1000,100000,1000000] [--output docs/benchmarks.md]
(after `.venv/bin/pip install -e '.[test,bench]'`). A full run takes about 45 minutes on 2
cores, most of it filling, exporting and pruning 1,000,000 entries per backend (--sizes makes
that smaller), and writes docs/benchmarks.md and docs/benchmarks.png, keeping the hand-written
block of the earlier report; `--quick` is a smoke run of a minute that writes a report only
when given --output.

Backends: SQLite (a file in a temporary directory), and Postgres and MariaDB/MySQL at
$SQLCACHE_TEST_POSTGRES_URL / $SQLCACHE_TEST_MYSQL_URL (the local servers by default), where
the benchmark works in a scratch database of its own, `sqlcache_bench_<pid>`, that it creates
and drops at the end: the tests' database is never touched.

What it measures, each subject on the same rows:

- sync hit, miss and update latency (p50, p99), the subjects interleaved key by key so that
  load from elsewhere on the machine hits them alike: SQLCache; langchain_community's
  SQLAlchemyCache and SQLAlchemyMd5Cache; the floor, SQLCache's lookup as one parametrized,
  prepared query on one persistent raw-driver connection (psycopg, PyMySQL, sqlite3)
  returning the rows undecoded;
- async hits/s at 1, 16 and 64 tasks: SQLCache.alookup, the same query on a raw async pool
  (asyncpg, aiomysql, aiosqlite) of SQLAlchemy's default capacity, and SQLAlchemyCache's
  alookup (LangChain's default: the sync lookup in a thread pool);
- the statements an update sends, for 1, 4 and 16 generations;
- hit latency as the table grows to 1,000,000 entries (filled with real cache rows from
  codec.encode_entry through bulk INSERTs), with 1 and 4 generations and prompts of 200 B,
  20 KB and 1 MB;
- peak RSS of prune, clear and export over the largest table, each in a fresh process;
- where the time of a hit goes: its parts timed one by one on every backend, and a
  pyinstrument profile on Postgres.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.metadata
import json
import os
import platform
import random
import re
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from langchain_core.outputs import Generation
from sqlalchemy import Engine, create_engine, insert, text

from langchain_sqlcache import SQLCache
from langchain_sqlcache.codec import decode_generations, encode_entry
from langchain_sqlcache.errors import CacheUnavailableError, is_transient
from langchain_sqlcache.models import entry_table, generation_table
from langchain_sqlcache.sqlalchemy_internals import greenlet_spawn
from langchain_sqlcache.statements import DriverQuery, driver_query, fetch_on, lookup_rows
from langchain_sqlcache.transfer import count, export_records, to_line

# Run by path, this script has bench/ on sys.path, not the repository's root that bench.*
# imports need (see bench/__init__.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# The round-trip counter the tests use (tests/wire.py), from the repository's root.
from tests.wire import SQLiteTrace, WireTap

from bench.backends import BACKENDS, Backend, drop_backend, scratch_backend, server_version
from bench.floors import async_floor, sync_floor
from bench.internals import (
    async_engines,
    async_runner,
    key_hasher,
    ready_async_engines,
    ready_engines,
    runner,
    sync_engines,
    unshielded_async_runner,
)
from bench.plan import (
    CONCURRENCY,
    DEFAULT_SIZES,
    FILL_BATCH,
    FLOOR,
    FULL,
    GROWTH_NS,
    HOT_NS,
    ID_BASE,
    LC_CACHE,
    LC_MD5,
    LLM,
    POOL_CAPACITY,
    PROBE_NS,
    PROMPT_SIZES,
    QUICK,
    QUICK_SIZES,
    ROUND_TRIP_GENERATIONS,
    SQLCACHE,
    SQLCACHE_POOLED,
    TRIPS_NS,
    Plan,
)
from bench.results import BackendResult, GrowthRow, MemoryRow, Profile, Stats, Trips
from bench.workload import _ns, answer, filler_generations, filler_prompt, log, now_utc, prompt_of

MIB = 2**20


# -- LangChain's own SQL caches -------------------------------------------------------------


def langchain_caches(backend: Backend, result: BackendResult) -> dict[str, Any]:
    """SQLAlchemyCache and SQLAlchemyMd5Cache where they run; the reason where they do not."""
    from langchain_community.cache import SQLAlchemyCache, SQLAlchemyMd5Cache

    caches: dict[str, Any] = {}
    for name, factory in ((LC_CACHE, SQLAlchemyCache), (LC_MD5, SQLAlchemyMd5Cache)):
        try:
            cache = factory(create_engine(backend.sync_url))
            cache.update("probe", LLM, answer(0, 1))
            if cache.lookup("probe", LLM) is None:
                result.failures[name] = "fails: a written value reads back as a miss"
                continue
            caches[name] = cache
        except Exception as exc:  # noqa: BLE001 - a failing peer is a result, not a crash
            result.failures[name] = f"fails: {_reason(exc)}"
    return caches


def _reason(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    first = re.sub(r"^\(in table [^)]*\): ", "", first)
    return f"{type(exc).__name__}: {first}"[:140]


# -- 1. sync latency ------------------------------------------------------------------------


def sync_latency(backend: Backend, plan: Plan, result: BackendResult) -> None:
    """Hits, misses and updates, every subject in turn on each key (rotating the order)."""
    cache = SQLCache(backend.url, namespace=HOT_NS, on_error="raise")
    peers = langchain_caches(backend, result)
    floor_lookup, floor_close = sync_floor(backend)
    hot = [prompt_of(f"hot {i}", PROMPT_SIZES["200 B"]) for i in range(plan.hot_keys)]
    hash_key = key_hasher(cache)
    keys = {prompt: hash_key(prompt, LLM) for prompt in hot}
    value = answer(1, 1)
    for prompt in hot:
        cache.update(prompt, LLM, value)
        for peer in peers.values():
            peer.update(prompt, LLM, value)

    lookups: dict[str, Callable[[str], object]] = {
        SQLCACHE: lambda prompt: cache.lookup(prompt, LLM),
        FLOOR: lambda prompt: floor_lookup(keys[prompt]),
        **{name: _lookup_of(peer) for name, peer in peers.items()},
    }
    updates: dict[str, Callable[[str], object]] = {
        SQLCACHE: lambda prompt: cache.update(prompt, LLM, value),
        **{name: _update_of(peer, value) for name, peer in peers.items()},
    }
    rng = random.Random(1)
    for _ in range(plan.warmup):
        prompt = rng.choice(hot)
        for call in lookups.values():
            call(prompt)
    samples: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for n in range(plan.hits):
        prompt = rng.choice(hot)
        for name, call in _rotated(lookups, n):
            elapsed, value_read = _ns(lambda: call(prompt))  # noqa: B023
            if not value_read:
                msg = f"{name} missed a key it holds on {backend.name}"
                raise RuntimeError(msg)
            samples[name]["hit"].append(elapsed)
    for n in range(plan.hits):
        prompt = prompt_of(f"missing {n}", PROMPT_SIZES["200 B"])
        keys[prompt] = hash_key(prompt, LLM)  # the floor gets its key for free
        for name, call in _rotated(lookups, n):
            samples[name]["miss"].append(_ns(lambda: call(prompt))[0])  # noqa: B023
    for n in range(plan.updates):
        prompt = prompt_of(f"new {n}", PROMPT_SIZES["200 B"])
        for name, call in _rotated(updates, n):
            samples[name]["update"].append(_ns(lambda: call(prompt))[0])  # noqa: B023
    result.sync = {
        name: {op: Stats.of(values) for op, values in ops.items()} for name, ops in samples.items()
    }
    floor_close()
    cache.close()
    for peer in peers.values():
        peer.engine.dispose()


def _lookup_of(peer: Any) -> Callable[[str], object]:
    return lambda prompt: peer.lookup(prompt, LLM)


def _update_of(peer: Any, value: list[Generation]) -> Callable[[str], object]:
    return lambda prompt: peer.update(prompt, LLM, value)


def _rotated(
    calls: dict[str, Callable[[str], object]], n: int
) -> list[tuple[str, Callable[[str], object]]]:
    items = list(calls.items())
    shift = n % len(items)
    return items[shift:] + items[:shift]


# -- 2. async throughput --------------------------------------------------------------------


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
    hash_key = key_hasher(cache)
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
    engines = async_engines(cache)
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


# -- 3. round trips per update ---------------------------------------------------------------


def update_round_trips(backend: Backend, result: BackendResult) -> None:
    """Round trips of one update by generation count, counted below the driver.

    Postgres and MariaDB: a proxy on loopback counts the requests the server answers
    (tests/wire.py's WireTap, which the tests use too). SQLite is in-process: its trace
    callback lists the statements it runs.
    """
    # prune_every=None: the default runs one pruning batch in its own transaction every 100th
    # update, which is not part of an update.
    result.trips = []
    tap = WireTap(backend.url) if backend.name != "sqlite" else None
    cache = SQLCache(
        tap.url if tap else backend.url, namespace=TRIPS_NS, on_error="raise", prune_every=None
    )
    engines = sync_engines(cache)
    trace = SQLiteTrace(*engines.owned) if engines and not tap else None
    try:
        # Drivers prepare a statement on its first use (asyncpg) or fifth (psycopg).
        for n in range(6):
            cache.update(f"warm-up {n}", LLM, answer(n, 1 + n % 2))
        for generations in ROUND_TRIP_GENERATIONS:
            for replace in (False, True):
                if tap:
                    tap.reset()
                if trace:
                    trace.clear()
                cache.update(f"trips {generations}", LLM, answer(replace, generations))
                result.trips.append(
                    Trips(
                        generations=generations,
                        replace=replace,
                        round_trips=tap.round_trips if tap else None,
                        statements=list(trace.statements) if trace else [],
                    )
                )
    finally:
        cache.clear()
        cache.close()
        if tap:
            tap.close()


# -- 4. growth ------------------------------------------------------------------------------


def fill(engine: Engine, stop: int) -> float:
    """Bulk-insert filler entries up to ``stop`` (resuming after the last); return seconds.

    The rows are those SQLCache writes (codec.encode_entry), inserted as executemany batches
    of FILL_BATCH entries, one transaction each.
    """
    with engine.connect() as connection:
        last = connection.execute(
            text("SELECT max(id) FROM llm_cache_entry WHERE namespace = :ns"), {"ns": GROWTH_NS}
        ).scalar()
    start = 0 if last is None else int(last) - ID_BASE + 1
    if start >= stop:
        return 0.0
    values = {n: answer(7, n) for n in (1, 4)}
    now = now_utc()
    started = time.perf_counter()
    for low in range(start, stop, FILL_BATCH):
        entries: list[dict[str, Any]] = []
        generations: list[dict[str, Any]] = []
        for i in range(low, min(stop, low + FILL_BATCH)):
            entry_row, generation_rows = encode_entry(
                GROWTH_NS,
                filler_prompt(i),
                LLM,
                values[filler_generations(i)],
                created_at=now,
                updated_at=now,
                expires_at=None,
            )
            entry_id = ID_BASE + i
            entries.append({**entry_row, "id": entry_id})
            generations.extend({**row, "entry_id": entry_id} for row in generation_rows)
        with engine.begin() as connection:
            connection.execute(insert(entry_table), entries)
            connection.execute(insert(generation_table), generations)
        done = min(stop, low + FILL_BATCH)
        if done % 100_000 == 0 or done == stop:
            elapsed = time.perf_counter() - started
            log(f"  filled {done:,} entries ({(done - start) / elapsed:,.0f}/s)")
    return time.perf_counter() - started


def analyze(engine: Engine) -> None:
    """Refresh planner statistics, as autovacuum / InnoDB's auto-recalc would after a fill."""
    statement = {
        "postgresql": "ANALYZE llm_cache_entry, llm_cache_generation",
        "mysql": "ANALYZE TABLE llm_cache_entry, llm_cache_generation",
        "mariadb": "ANALYZE TABLE llm_cache_entry, llm_cache_generation",
    }.get(engine.dialect.name)
    if statement:
        with engine.connect() as connection:
            analyzed = connection.execute(text(statement))
            if analyzed.returns_rows:  # MariaDB reports a row per table
                analyzed.all()
            connection.commit()


def growth(backend: Backend, plan: Plan, sizes: Sequence[int], result: BackendResult) -> None:
    """Hit p50 of SQLCache and of the floor as the table grows through ``sizes``."""
    result.growth, result.fills = [], []
    cache = SQLCache(backend.url, namespace=GROWTH_NS, on_error="raise", prune_every=None)
    probes = SQLCache(backend.url, namespace=PROBE_NS, on_error="raise", prune_every=None)
    floor_lookup, floor_close = sync_floor(backend)
    engine = create_engine(backend.sync_url)
    cache.lookup("make sure the schema exists", LLM)
    big: dict[tuple[str, int], list[str]] = {}
    for label, count_ in (("20 KB", plan.probes_20kb), ("1 MB", plan.probes_1mb)):
        for n in range(count_):
            generations = 1 if n % 2 == 0 else 4
            prompt = prompt_of(f"probe {n}", PROMPT_SIZES[label])
            probes.update(prompt, LLM, answer(n, generations))
            big.setdefault((label, generations), []).append(prompt)
    rng = random.Random(2)
    for size in sizes:
        log(f"{backend.name}: growing the table to {size:,} entries")
        seconds = fill(engine, size)
        if seconds:
            result.fills.append((size, seconds))
        analyze(engine)
        for generations in (1, 4):
            parity = 0 if generations == 1 else 1
            pool = [filler_prompt(2 * rng.randrange(size // 2) + parity) for _ in range(2000)]
            result.growth.append(
                _growth_row(cache, floor_lookup, size, "200 B", generations, pool, plan)
            )
        for (label, generations), prompts in big.items():
            result.growth.append(
                _growth_row(probes, floor_lookup, size, label, generations, prompts, plan)
            )
    floor_close()
    engine.dispose()
    probes.clear()
    probes.close()
    cache.close()


def _growth_row(
    cache: SQLCache,
    floor_lookup: Callable[[str], list[Any]],
    size: int,
    label: str,
    generations: int,
    prompts: list[str],
    plan: Plan,
) -> GrowthRow:
    # A 1 MB prompt costs milliseconds to hash; a fifth of the lookups is plenty.
    lookups = plan.growth_hits if label != "1 MB" else max(20, plan.growth_hits // 5)
    warmup = min(plan.warmup, lookups)
    ours: list[int] = []
    theirs: list[int] = []
    hash_key = key_hasher(cache)
    for n in range(warmup + lookups):
        prompt = prompts[n % len(prompts)]
        key_hash = hash_key(prompt, LLM)
        pair = [
            (ours, lambda: cache.lookup(prompt, LLM)),  # noqa: B023
            (theirs, lambda: floor_lookup(key_hash)),  # noqa: B023
        ]
        for samples, call in pair if n % 2 else reversed(pair):
            elapsed, found = _ns(call)
            if not found:
                msg = f"a {label} entry with {generations} generations missed"
                raise RuntimeError(msg)
            if n >= warmup:
                samples.append(elapsed)
    return GrowthRow(size, label, generations, Stats.of(ours), Stats.of(theirs))


# -- 5. memory of prune, clear and export ---------------------------------------------------


def memory(backend: Backend, size: int, result: BackendResult) -> None:
    """Peak RSS of export, prune and clear over ``size`` filler entries, each in a new process."""
    result.memory = []
    engine = create_engine(backend.sync_url)
    try:
        with engine.connect() as connection:
            held = connection.execute(
                text("SELECT count(*) FROM llm_cache_entry WHERE namespace = :ns"),
                {"ns": GROWTH_NS},
            ).scalar_one()
        if held > size:  # a larger table from an earlier attempt, or one pruned midway
            _clear_growth(backend)
        fill(engine, size)
        result.memory.append(_child(backend, "export", size))
        result.memory.append(_child(backend, "prune", max(1, size // 100)))
        _clear_growth(backend)  # what prune left
        log(f"{backend.name}: refilling {size:,} entries for clear")
        result.fills.append((size, fill(engine, size)))
        result.memory.append(_child(backend, "clear", 0))
    finally:
        engine.dispose()


class ChildFailedError(RuntimeError):
    """A measuring child process exited with an error (a server restart, most often)."""


def _clear_growth(backend: Backend) -> None:
    cache = SQLCache(backend.url, namespace=GROWTH_NS, on_error="raise")
    cache.clear()
    cache.close()


def _child(backend: Backend, operation: str, max_entries: int) -> MemoryRow:
    log(f"{backend.name}: {operation} in a fresh process")
    url = backend.url.render_as_string(hide_password=False)
    command = [sys.executable, __file__, "--child", operation, url, str(max_entries)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        msg = f"{operation} in a child process failed: {last}"
        raise ChildFailedError(msg)
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    return MemoryRow(**report)


def child(operation: str, url: str, max_entries: int) -> None:
    """Run one operation over the growth namespace; print a MemoryRow as JSON."""
    cache = SQLCache(url, namespace=GROWTH_NS, on_error="raise", max_entries=max_entries or None)
    entries = count(cache, all_namespaces=False)
    baseline = _rss_kib("VmRSS")
    started = time.perf_counter()
    if operation == "export":
        lines = 0
        with open(os.devnull, "w", encoding="utf-8") as sink:
            for record in export_records(cache, all_namespaces=False):
                sink.write(to_line(record))
                lines += 1
        detail = f"{lines:,} lines written"
    elif operation == "prune":
        detail = f"{cache.prune():,} entries deleted (max_entries={max_entries:,})"
    else:
        cache.clear()
        detail = f"{entries - count(cache, all_namespaces=False):,} entries deleted"
    seconds = time.perf_counter() - started
    peak = _rss_kib("VmHWM")
    cache.close()
    print(json.dumps({
        "operation": operation,
        "entries": entries,
        "seconds": seconds,
        "baseline_mib": baseline / 1024,
        "peak_mib": peak / 1024,
        "detail": detail,
    }))  # fmt: skip


def _rss_kib(field_name: str) -> int:
    """VmRSS or VmHWM of this process (KiB), from /proc; ru_maxrss where there is no /proc."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# -- 6. the parts of a hit, timed one by one --------------------------------------------------

LOOKUP, HASH, CHECKOUT, HELD, READ, DECODE = (
    "SQLCache.lookup, whole",
    "key hash (codec.entry_key)",
    "pool checkout and return, nothing run (raw_connection, close)",
    "lookup statement on a held DBAPI connection (parameters, execute, fetch)",
    "_run(lookup_rows): retry wrapper + checkout + statement + return",
    "decode_generations (rows to ChatGeneration)",
)
ALOOKUP, AREAD, AUNSHIELDED, AHELD, AFLOOR = (
    "SQLCache.alookup, whole",
    "_arun: ensure_future + shield + _arun_unshielded",
    "_arun_unshielded: retry wrapper + greenlet + checkout + statement + return",
    "lookup statement on a held connection, in a greenlet",
    "raw async driver, one connection",
)


def _held_lookup(connection: Any, query: DriverQuery, key_hash: str, now: datetime) -> list[Any]:
    """The lookup statement on a checked-out DBAPI connection, as run_on_reader runs it."""
    return fetch_on(connection, query, query.parameters({"key_hash": key_hash, "now": now}))


def components(backend: Backend, plan: Plan, result: BackendResult) -> None:
    """Time the parts of a hit separately, interleaved, so that their costs can be subtracted."""
    cache = SQLCache(backend.url, namespace=HOT_NS, on_error="raise")
    hot = [prompt_of(f"hot {i}", PROMPT_SIZES["200 B"]) for i in range(plan.hot_keys)]
    for prompt in hot:
        cache.update(prompt, LLM, answer(1, 1))
    hash_key, run = key_hasher(cache), runner(cache)
    keys = {prompt: hash_key(prompt, LLM) for prompt in hot}
    floor_lookup, floor_close = sync_floor(backend)
    engines = ready_engines(cache)
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
    hash_key = key_hasher(cache)
    arun, arun_unshielded = async_runner(cache), unshielded_async_runner(cache)
    keys = {prompt: hash_key(prompt, LLM) for prompt in hot}
    floor = await async_floor(backend, 1)
    await cache.alookup(hot[0], LLM)  # this loop's pool
    engines = await ready_async_engines(cache)
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


# -- 7. profile of the hit path -------------------------------------------------------------

# Inclusive time of these frames (function name, a piece of its file path), nested ones once.
SYNC_STEPS: dict[str, tuple[tuple[str, str], ...]] = {
    "key hashing (entry_key)": (("entry_key", "codec"),),
    "the statement on a pooled connection (run_on_reader)": (
        ("run_on_reader", "langchain_sqlcache/statements"),
    ),
    "of which pool checkout and return": (
        ("raw_connection", "sqlalchemy/engine/base"),
        ("close", "sqlalchemy/pool/base"),
    ),
    "of which parameters (bind processors)": (("parameters", "langchain_sqlcache/statements"),),
    "decoding (decode_generations)": (("decode_generations", "codec"),),
}
ASYNC_STEPS: dict[str, tuple[tuple[str, str], ...]] = {
    **SYNC_STEPS,
    "ensure_future + shield (_arun)": (("shield", "asyncio"), ("ensure_future", "asyncio")),
    "greenlet hand-off (greenlet_spawn, await_)": (
        ("greenlet_spawn", "sqlalchemy"),
        ("await_", "sqlalchemy"),
    ),
    "waiting in the event loop (select)": (("select", "selectors"),),
}


def profile_hits(backend: Backend, plan: Plan) -> list[Profile]:
    """Profile sync lookups, then async lookups from one task, of hot keys."""
    from pyinstrument import Profiler

    cache = SQLCache(backend.url, namespace=HOT_NS, on_error="raise")
    hot = [prompt_of(f"hot {i}", PROMPT_SIZES["200 B"]) for i in range(plan.hot_keys)]
    for prompt in hot:
        cache.update(prompt, LLM, answer(1, 1))
        cache.lookup(prompt, LLM)
    profiles = []
    profiler = Profiler(interval=0.0001, async_mode="disabled")
    profiler.start()
    started = time.perf_counter()
    for n in range(plan.profile_ops):
        cache.lookup(hot[n % len(hot)], LLM)
    seconds = time.perf_counter() - started
    profiler.stop()
    profiles.append(
        _profile_of(f"{backend.name}, sync lookup", profiler, seconds, plan.profile_ops, SYNC_STEPS)
    )
    cache.close()

    async def lookups() -> float:
        acache = SQLCache(backend.url, namespace=HOT_NS, on_error="raise")
        for prompt in hot:
            await acache.alookup(prompt, LLM)
        profiler.start()
        started = time.perf_counter()
        for n in range(plan.profile_ops):
            await acache.alookup(hot[n % len(hot)], LLM)
        elapsed = time.perf_counter() - started
        profiler.stop()
        await acache.aclose()
        return elapsed

    profiler = Profiler(interval=0.0001, async_mode="disabled")
    seconds = asyncio.run(lookups())
    profiles.append(
        _profile_of(
            f"{backend.name}, async alookup from 1 task",
            profiler,
            seconds,
            plan.profile_ops,
            ASYNC_STEPS,
        )
    )
    return profiles


def _profile_of(
    label: str,
    profiler: Any,
    seconds: float,
    ops: int,
    steps: dict[str, tuple[tuple[str, str], ...]],
) -> Profile:
    root = profiler.last_session.root_frame(trim_stem=False)
    total = root.time
    self_times: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    step_times: Counter[str] = Counter()

    def walk(frame: Any, open_steps: frozenset[str], parent_package: str) -> None:
        # Synthetic frames ([self], [await]) are already in their parent's total_self_time.
        if frame.is_synthetic:
            return
        path = (frame.file_path or "").replace("\\", "/")
        package = _package(frame.function, path, parent_package)
        if not path.startswith("<thread>"):
            self_times[_frame_name(frame.function, path, frame.line_no)] += frame.total_self_time
            packages[package] += frame.total_self_time
        here = set(open_steps)
        for step, matchers in steps.items():
            if step in open_steps:
                continue
            if any(frame.function == name and part in path for name, part in matchers):
                step_times[step] += frame.time
                here.add(step)
        for child_frame in frame.children:
            walk(child_frame, frozenset(here), package)

    walk(root, frozenset(), "other")
    return Profile(
        label=label,
        seconds=seconds,
        ops=ops,
        steps=[(step, step_times[step] / total) for step in steps],
        packages=[(name, t / total) for name, t in packages.most_common()],
        top_self=[(name, t / total) for name, t in self_times.most_common(15)],
    )


# Where a thread waits for the server: the event loop's poll, psycopg's wait, socket calls.
WAITS = ("epoll.poll", "select.select", "poll.poll", "socket.recv", "socket.recv_into")
WAITING = "waiting for the server and socket I/O"


def _package(function: str, path: str, parent_package: str) -> str:
    """The package a frame's self time is charged to; C built-ins go to their caller."""
    if (
        function in WAITS
        or function.startswith("socket.")
        or (function.startswith("wait") and "psycopg" in path)
    ):
        return WAITING
    if path.startswith("<"):
        return parent_package
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0]
    if "langchain_sqlcache" in path:
        return "langchain_sqlcache"
    if "/lib/python3" in path:
        return "stdlib " + path.split("/lib/python3", 1)[1].split("/")[1].removesuffix(".py")
    return "other"


def _frame_name(function: str, path: str, line: int | None) -> str:
    path = re.sub(r"^.*/(site-packages|src|lib/python3\.\d+)/", "", path)
    return f"{function} ({path}:{line})" if path and not path.startswith("<") else function


# -- running it -----------------------------------------------------------------------------


def retrying(label: str, step: Callable[[], None], result: BackendResult) -> bool:
    """Run a step; rerun it after a pause when a server was briefly away (up to 3 times)."""
    for attempt in range(1, 4):
        try:
            step()
            return True
        except Exception as exc:  # noqa: BLE001 - a failed step is reported, the run goes on
            transient = (
                is_transient(exc)
                or isinstance(exc, (CacheUnavailableError, ChildFailedError, OSError))
                or type(exc).__module__.split(".")[0] in ("asyncpg", "psycopg", "pymysql")
            )
            log(f"{result.name}: {label} failed ({_reason(exc)})")
            if not transient or attempt == 3:
                result.errors.append(f"{label}: {_reason(exc)}")
                return False
            time.sleep(10)
    return False


def run_backend(
    name: str, plan: Plan, sizes: Sequence[int], work: Path
) -> tuple[BackendResult, list[Profile]]:
    result = BackendResult(name)
    backends: list[Backend] = []
    profiles: list[Profile] = []

    def prepare() -> None:
        backends.append(scratch_backend(name, work))
        result.server = server_version(backends[-1])

    if not retrying("scratch database", prepare, result):
        return result, profiles
    backend = backends[-1]
    try:
        log(f"{name}: {result.server}")
        log(f"{name}: sync latency")
        retrying("sync latency", lambda: sync_latency(backend, plan, result), result)
        print(sync_table(result), flush=True)
        log(f"{name}: the parts of a hit")
        retrying("parts of a hit", lambda: components(backend, plan, result), result)
        print(components_table(result), flush=True)
        log(f"{name}: async throughput")
        retrying("async throughput", lambda: async_throughput(backend, plan, result), result)
        print(throughput_table(result), flush=True)
        log(f"{name}: round trips per update")
        retrying("update round trips", lambda: update_round_trips(backend, result), result)
        print(trips_table(result), flush=True)
        if name == "postgresql":
            log(f"{name}: profiling the hit path")

            def profile() -> None:
                profiles.extend(profile_hits(backend, plan))

            retrying("profile", profile, result)
        retrying("growth", lambda: growth(backend, plan, sizes, result), result)
        print(growth_table(result), flush=True)
        retrying("memory", lambda: memory(backend, max(sizes), result), result)
        print(memory_table(result), flush=True)
    finally:
        retrying("dropping the scratch database", lambda: drop_backend(backend), result)
    return result, profiles


# -- reporting ------------------------------------------------------------------------------


def _us(value: float) -> str:
    return f"{value:,.0f} µs" if value >= 100 else f"{value:,.1f} µs"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def sync_table(result: BackendResult) -> str:
    lines = [
        f"#### {result.name}: sync latency (interleaved, µs)",
        "",
        "| subject | hit p50 | hit p99 | miss p50 | miss p99 | update p50 | update p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in (SQLCACHE, FLOOR, LC_CACHE, LC_MD5):
        ops = result.sync.get(name)
        if ops is None:
            reason = result.failures.get(name, "not measured")
            lines.append(f"| {name} | {reason} | | | | | |")
            continue
        cells = []
        for op in ("hit", "miss", "update"):
            stats = ops.get(op)
            cells += [_us(stats.p50), _us(stats.p99)] if stats else ["-", "-"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def throughput_table(result: BackendResult) -> str:
    lines = [
        f"#### {result.name}: async hits/s (best of the rounds)",
        "",
        "| subject | " + " | ".join(f"{t} task{'s' if t > 1 else ''}" for t in CONCURRENCY) + " |",
        "|---|" + "---|" * len(CONCURRENCY),
    ]
    labels = {
        SQLCACHE: f"SQLCache.alookup (the pool it builds: {result.pool or '?'})",
        SQLCACHE_POOLED: f"SQLCache.alookup (pool_size={POOL_CAPACITY}, max_overflow=0)",
        FLOOR: f"raw async pool ({POOL_CAPACITY} connections)",
        LC_CACHE: "SQLAlchemyCache.alookup (thread pool)",
    }
    for name, label in labels.items():
        rates = result.throughput.get(name)
        if rates is None and name == SQLCACHE_POOLED:
            continue  # SQLCache builds that pool itself: the row above
        if rates is None:
            lines.append(f"| {label} | {result.failures.get(name, 'not measured')} | | |")
            continue
        lines.append(f"| {label} | " + " | ".join(f"{rates[t]:,.0f}" for t in CONCURRENCY) + " |")
    return "\n".join(lines) + "\n"


def trips_table(result: BackendResult) -> str:
    if result.name == "sqlite":
        lines = [
            f"#### {result.name}: the statements of one update (SQLite's trace, in-process)",
            "",
            "| generations | key | statements | in order |",
            "|---|---|---|---|",
        ]
        for trips in result.trips:
            verbs = [" ".join(s.split()[:2]) for s in trips.statements]
            lines.append(
                f"| {trips.generations} | {'existing' if trips.replace else 'new'} "
                f"| {len(trips.statements)} | {', '.join(verbs)} |"
            )
        return "\n".join(lines) + "\n"
    lines = [
        f"#### {result.name}: round trips of one update (counted on the wire)",
        "",
        "| generations | key | round trips |",
        "|---|---|---|",
    ]
    for trips in result.trips:
        lines.append(
            f"| {trips.generations} | {'existing' if trips.replace else 'new'} "
            f"| {trips.round_trips} |"
        )
    return "\n".join(lines) + "\n"


def growth_table(result: BackendResult) -> str:
    lines = [
        f"#### {result.name}: hit latency as the table grows (p50, µs)",
        "",
        "| entries | prompt | generations | SQLCache p50 | SQLCache p99 | raw driver p50"
        " | SQLCache / raw |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result.growth:
        lines.append(
            f"| {row.size:,} | {row.prompt} | {row.generations} | {_us(row.sqlcache.p50)} "
            f"| {_us(row.sqlcache.p99)} | {_us(row.floor.p50)} "
            f"| {row.sqlcache.p50 / row.floor.p50:.2f}x |"
        )
    if result.fills:
        fills = ", ".join(f"to {size:,} in {seconds:.0f} s" for size, seconds in result.fills)
        lines += ["", f"Bulk fills: {fills}."]
    return "\n".join(lines) + "\n"


def memory_table(result: BackendResult) -> str:
    lines = [
        f"#### {result.name}: peak memory, each operation in a fresh process",
        "",
        "| operation | entries | seconds | RSS before | peak RSS | detail |",
        "|---|---|---|---|---|---|",
    ]
    for row in result.memory:
        lines.append(
            f"| {row.operation} | {row.entries:,} | {row.seconds:.1f} | {row.baseline_mib:.0f} MiB"
            f" | {row.peak_mib:.0f} MiB | {row.detail} |"
        )
    return "\n".join(lines) + "\n"


def components_table(result: BackendResult) -> str:
    """Each part of a hit timed alone, and what the differences of their medians say."""
    lines: list[str] = []
    sync, asyn = result.components, result.async_components
    if sync:
        p50 = {name: stats.p50 for name, stats in sync.items()}
        derived = {
            "= the compiled statement's cost over the raw driver (held - raw)": (
                p50[HELD] - p50[FLOOR]
            ),
            "= retry wrapper and engine checks (_run - checkout - statement)": (
                p50[READ] - p50[CHECKOUT] - p50[HELD]
            ),
            "= the rest of lookup (lookup - _run - decode - hash)": (
                p50[LOOKUP] - p50[READ] - p50[DECODE] - p50[HASH]
            ),
        }
        title = f"#### {result.name}: the parts of a sync hit (p50, each timed alone)"
        lines += _parts(title, p50, derived, p50[LOOKUP])
    if asyn:
        p50 = {name: stats.p50 for name, stats in asyn.items()}
        derived = {
            "= key hash + decode (alookup - _arun)": p50[ALOOKUP] - p50[AREAD],
            "= ensure_future + shield (_arun - _arun_unshielded)": p50[AREAD] - p50[AUNSHIELDED],
            "= retry wrapper + checkout + return (_arun_unshielded - held)": (
                p50[AUNSHIELDED] - p50[AHELD]
            ),
            "= greenlet + SQLAlchemy's adapter over the raw driver (held - raw)": (
                p50[AHELD] - p50[AFLOOR]
            ),
        }
        title = f"#### {result.name}: the parts of an async hit, one task (p50)"
        lines += _parts(title, p50, derived, p50[ALOOKUP])
    return "\n".join(lines)


def _parts(title: str, p50: dict[str, float], derived: dict[str, float], whole: float) -> list[str]:
    rows = {**p50, **derived}
    return [
        title,
        "",
        "| part | p50 | share of the whole call |",
        "|---|---|---|",
        *(f"| {name} | {_us(value)} | {value / whole:.0%} |" for name, value in rows.items()),
        "",
    ]


def profile_table(profile: Profile) -> str:
    per_op = profile.seconds / profile.ops * 1e6
    lines = [
        f"#### {profile.label}: {profile.ops:,} hits, {per_op:.0f} µs each under the profiler",
        "",
        "| step (inclusive) | share of the time |",
        "|---|---|",
        *(f"| {step} | {share:.0%} |" for step, share in profile.steps),
        "",
        "| self time by package | share |",
        "|---|---|",
        *(f"| {name} | {share:.0%} |" for name, share in profile.packages if share >= 0.005),
        "",
        "| function (self time) | share |",
        "|---|---|",
        *(f"| `{name}` | {share:.1%} |" for name, share in profile.top_self),
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Target:
    """A target, and its measured ratio on one backend."""

    label: str
    value: float | None
    met: bool | None
    note: str = ""

    def cell(self) -> str:
        """The table cell."""
        if self.value is None:
            return self.note or "n/a"
        verdict = "no target" if self.met is None else ("**met**" if self.met else "**not met**")
        return f"{self.value:.2f}x, {verdict}" + (f" ({self.note})" if self.note else "")


def targets(result: BackendResult, sizes: Sequence[int]) -> list[Target]:
    """The ratios the project aims for, measured on one backend."""
    out: list[Target] = []
    sync = result.sync
    ours_hit = sync.get(SQLCACHE, {}).get("hit")
    floor_hit = sync.get(FLOOR, {}).get("hit")
    limit = 2.0 if result.name == "sqlite" else 1.5
    label = "sync hit p50 / raw driver (<= 1.5x; SQLite <= 2x)"
    if ours_hit and floor_hit:
        ratio = ours_hit.p50 / floor_hit.p50
        out.append(Target(label, ratio, ratio <= limit))
    else:
        out.append(Target(label, None, None, "not measured"))
    ours = result.throughput.get(SQLCACHE, {}).get(64)
    raw = result.throughput.get(FLOOR, {}).get(64)
    label = "async hits/s at 64 tasks / raw async pool (>= 0.7x on Postgres)"
    if ours and raw:
        ratio = ours / raw
        pooled = result.throughput.get(SQLCACHE_POOLED, {}).get(64)
        note = f"pool_size={POOL_CAPACITY}: {pooled / raw:.2f}x" if pooled else ""
        met = ratio >= 0.7 if result.name == "postgresql" else None
        out.append(Target(label, ratio, met, note))
    else:
        out.append(Target(label, None, None, "not measured"))
    for peer in (LC_CACHE, LC_MD5):
        for op in ("hit", "update"):
            label = f"{peer} {op} p50 / SQLCache (>= 4x)"
            theirs = sync.get(peer, {}).get(op)
            ours_op = sync.get(SQLCACHE, {}).get(op)
            if theirs and ours_op:
                ratio = theirs.p50 / ours_op.p50
                out.append(Target(label, ratio, ratio >= 4))
            else:
                out.append(Target(label, None, None, result.failures.get(peer, "not measured")))
    trips_label = "round trips per update, 1/4/16 generations (fixed, <= 3)"
    if result.trips and result.name == "sqlite":
        # In-process: no round trip; one transaction whose statements do not depend on the
        # generations but for sqlite3 stepping the executemany INSERT once a row.
        shapes = {tuple(s.split()[0] for s in t.statements[:3]) for t in result.trips}
        note = f"in-process, one transaction ({', '.join(next(iter(shapes)))} ... COMMIT)"
        out.append(Target(trips_label, None, None, note))
    elif result.trips:
        trips = {t.round_trips for t in result.trips}
        fixed = len(trips) == 1
        met = fixed and max(n or 0 for n in trips) <= 3
        note = (
            f"{'**met**' if met else '**not met**'}: "
            f"{'/'.join(str(n) for n in sorted(n or 0 for n in trips))} round trips"
            f" {'for every generation count' if fixed else 'varying with the generations'}"
        )
        out.append(Target(trips_label, None, None, note))
    else:
        out.append(Target(trips_label, None, None, "not measured"))
    rows = {(r.size, r.prompt, r.generations): r for r in result.growth}
    small, large = min(sizes), max(sizes)
    for generations in (1, 4):
        label = f"hit p50 at {large:,} / at {small:,} entries, {generations} gen. (<= 1.25x)"
        first = rows.get((small, "200 B", generations))
        last = rows.get((large, "200 B", generations))
        if first and last:
            ratio = last.sqlcache.p50 / first.sqlcache.p50
            floor_ratio = last.floor.p50 / first.floor.p50
            out.append(Target(label, ratio, ratio <= 1.25, f"raw driver: {floor_ratio:.2f}x"))
        else:
            out.append(Target(label, None, None, "not measured"))
    for row in result.memory:
        label = f"peak RSS of {row.operation} over {row.entries:,} entries (< 200 MB)"
        megabytes = row.peak_mib * MIB / 1e6
        out.append(
            Target(
                label,
                None,
                None,
                f"{megabytes:.0f} MB, {'**met**' if megabytes < 200 else '**not met**'}",
            )
        )
    return out


def targets_table(results: list[BackendResult], sizes: Sequence[int]) -> str:
    by_backend = [targets(result, sizes) for result in results]
    labels: list[str] = []
    for rows in by_backend:
        labels += [t.label for t in rows if t.label not in labels]
    lines = [
        "| target | " + " | ".join(r.name for r in results) + " |",
        "|---|" + "---|" * len(results),
    ]
    for label in labels:
        cells = []
        for rows in by_backend:
            found = next((t for t in rows if t.label == label), None)
            cells.append(found.cell() if found else "n/a")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def machine() -> str:
    cpu = "unknown CPU"
    memory_total = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_total = int(line.split()[1]) * 1024
    ram = f"{memory_total / 2**30:.0f} GiB RAM" if memory_total else "RAM unknown"
    return f"{cpu}, {os.cpu_count()} cores, {ram}, {platform.system()} {platform.machine()}"


@functools.cache
def source_revision() -> str:
    """The commit measured and whether src/ differs from it (read once, at the start)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args],  # noqa: S607 - git from PATH, as a developer runs it
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "src")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" with uncommitted changes in src/" if dirty else "")


def versions() -> str:
    packages = (
        "sqlalchemy",
        "psycopg",
        "asyncpg",
        "pymysql",
        "aiomysql",
        "aiosqlite",
        "langchain-core",
        "langchain-community",
        "langchain-sqlcache",
        "pyinstrument",
    )
    found = []
    for package in packages:
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{package} (not installed)")
    return f"Python {platform.python_version()}, " + ", ".join(found)


def report(
    results: list[BackendResult],
    profiles: list[Profile],
    sizes: Sequence[int],
    plan: Plan,
    command: str,
    started: datetime,
    load: tuple[tuple[float, ...], tuple[float, ...]],
    plot: str | None,
    analysis: str,
) -> str:
    quick = plan == QUICK
    parts = [
        "# Performance: SQLCache against the raw driver and LangChain's SQL caches",
        "",
        f"Produced by `{command}` on {started:%Y-%m-%d} "
        f"({'a --quick smoke run: small samples, indicative only' if quick else 'a full run'},"
        f" {(now_utc() - started).total_seconds() / 60:.0f} min).",
        "",
        f"- Machine: {machine()}; load average {load[0][0]:.2f} at the start, "
        f"{load[1][0]:.2f} at the end (other work on the machine shifts absolute times; the "
        "subjects are interleaved so that it shifts them alike).",
        f"- Versions: {versions()}; langchain-sqlcache at commit {source_revision()}.",
        *(f"- {r.name}: {r.server or 'n/a'}" for r in results),
        "- SQLite is a file in a temporary directory; Postgres and MariaDB are the local servers"
        " on loopback with their Debian defaults, in a scratch database created for the run.",
        "",
        "Absolute times depend on the machine; compare the ratios. Each cache writes the same"
        " value: one ChatGeneration (AIMessage of ~400 characters, usage and response metadata);"
        " prompts are 200 bytes unless said otherwise.",
        "",
        "## Targets",
        "",
        targets_table(results, sizes),
        "How to read the targets:",
        "",
        "- **raw driver** is the floor: SQLCache's lookup statement (the entry joined to its"
        " generations by `key_hash`, live entries only, ordered by `idx`) written by hand, sent"
        " as one parametrized, prepared query (psycopg `prepare=True`; asyncpg caches its"
        " prepared statements; PyMySQL and aiomysql interpolate client-side, MySQL's usual"
        " way) on a persistent autocommit connection, rows returned undecoded. SQLCache on"
        " top of it hashes the key, checks a connection out of SQLAlchemy's pool, runs the"
        " cached compiled statement and rebuilds the Generation objects.",
        "- **async** compares SQLCache.alookup with the same query on a raw async pool of"
        f" {POOL_CAPACITY} connections, SQLAlchemy's default pool capacity (5 + 10 overflow),"
        " at 1, 16 and 64 concurrent tasks; best of"
        f" {plan.rounds} round{'s' if plan.rounds > 1 else ''} of {plan.async_ops:,} hits."
        " asyncpg's pool runs without the session-reset query it sends on each release by"
        " default, so that its lookup is one round trip, as SQLCache's is.",
        "- **round trips per update** are counted on the wire by a proxy on loopback"
        " (tests/wire.py: each request the server answers), after warm-up (drivers prepare a"
        " statement once per connection). Postgres sends an update as one statement in"
        " autocommit, MySQL as its transaction's statements in one packet (START TRANSACTION"
        " ... COMMIT). SQLite is in-process: its trace callback lists the statements of the"
        " update's one transaction. By default every 100th update also runs a pruning batch in"
        " its own transaction.",
        "- **growth** looks up random entries across the whole table (not a hot set), so a large"
        " table that outgrows the server's buffer cache shows it.",
        "",
        analysis,
        "",
        "## Sync latency",
        "",
        f"{plan.hits:,} hits over {plan.hot_keys} keys, {plan.hits:,} misses and"
        f" {plan.updates:,} updates of new keys per subject after {plan.warmup} warm-up lookups;"
        " the subjects take turns on each key, in rotating order. SQLCache runs with its defaults"
        ' (`on_error="raise"` so that a failure cannot pass for a miss).',
        "",
        *(sync_table(r) for r in results),
        "## Async throughput",
        "",
        *(throughput_table(r) for r in results),
        "## Statements per update",
        "",
        *(trips_table(r) for r in results),
        "## Growth",
        "",
        "The table is filled with real cache rows (codec.encode_entry, as `update` writes them;"
        f" alternately 1 and 4 generations) by executemany INSERTs of {FILL_BATCH:,} entries;"
        " Postgres and MariaDB then ANALYZE the tables. Lookups of 200-byte prompts pick random"
        f" entries of the whole table; 20 KB and 1 MB prompts are {plan.probes_20kb} and"
        f" {plan.probes_1mb} entries written by `update` beside them. A 1 MB prompt spends most"
        " of its time hashing the prompt (the raw query gets the key for free).",
        "",
        *(growth_table(r) for r in results),
        f"![hit latency against table size]({Path(plot).name})" if plot else "",
        "",
        "## Memory",
        "",
        "Each operation runs in a new Python process (this script with a hidden `--child`"
        " option) over the largest table; peak RSS is the kernel's high-water mark (VmHWM)."
        " `export` streams every entry of the namespace through `transfer.export_records` and"
        " `to_line` (to /dev/null); `prune` runs with `max_entries` at 1% of the entries, so it"
        " deletes 99% of them in batches of 1,000; `clear` deletes the namespace. RSS before"
        " is the process after imports and engine setup.",
        "",
        *(memory_table(r) for r in results),
    ]
    parts += [
        "## Where a hit's time goes",
        "",
        "First each part of a hit timed on its own, the parts interleaved key by key"
        f" ({plan.hits:,} rounds over {plan.hot_keys} hot keys); differences of medians"
        " approximate the costs in between. `held` is a connection checked out once and kept;"
        " the raw driver is the floor above.",
        "",
        *(components_table(r) for r in results),
    ]
    if profiles:
        parts += [
            "Then a profile on Postgres: pyinstrument, sampling every 0.1 ms, over lookups of hot"
            " keys from one thread / one task. Inclusive shares of steps (nested matches counted"
            " once), self time by package, and the functions with the most self time. The"
            " profiler adds a cost to every call, so code made of many small calls (key"
            " hashing, event dispatch) looks more expensive here than in the timings above."
            " Waiting for the server (psycopg's `wait`, the event loop's `epoll.poll`) is the"
            " database round trip itself; psycopg's C calls appear as self time of its Python"
            " frames.",
            "",
            *(profile_table(p) for p in profiles),
        ]
    errors = [f"- {r.name}: {e}" for r in results for e in r.errors]
    if errors:
        parts += ["## What did not run", "", *errors, ""]
    return "\n".join(parts).rstrip() + "\n"


def write_plot(results: list[BackendResult], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(9, 4.5))
    drawn = False
    for number, result in enumerate(results):
        rows = [r for r in result.growth if r.prompt == "200 B" and r.generations == 1]
        if not rows:
            continue
        color = f"C{number}"
        sizes = [r.size for r in rows]
        axes.plot(sizes, [r.sqlcache.p50 for r in rows], "o-", color=color,
                  label=f"{result.name}: SQLCache")  # fmt: skip
        axes.plot(sizes, [r.floor.p50 for r in rows], "s--", color=color, alpha=0.6,
                  label=f"{result.name}: raw driver")  # fmt: skip
        drawn = True
    if not drawn:
        pyplot.close(figure)
        return False
    axes.set_xscale("log")
    axes.set_ylim(bottom=0)
    axes.set_xlabel("entries in the table")
    axes.set_ylabel("hit latency p50 (µs)")
    axes.set_title("Sync hit, 200 B prompt, 1 generation")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help="comma-separated: sqlite,postgresql,mysql (default: all)")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: few operations, sizes 1,000 and 10,000")  # fmt: skip
    parser.add_argument("--sizes", default=None,
                        help="table sizes for the growth and memory runs "
                             "(default: 1000,100000,1000000)")  # fmt: skip
    parser.add_argument("--output", default=None,
                        help="Markdown report to write, with a .png beside it (default: "
                             "docs/benchmarks.md for a full run; none for --quick)")  # fmt: skip
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    # A terminated run still drops its scratch databases and temporary files.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # langchain_community announces its sunset, and loads() its allowed_objects default.
    warnings.filterwarnings("ignore", message=".*langchain-community.*")
    warnings.filterwarnings("ignore", message=".*allowed_objects.*")
    if args.child:
        operation, url, max_entries = args.child
        child(operation, url, int(max_entries))
        return
    plan = QUICK if args.quick else FULL
    names = [name.strip() for name in args.backends.split(",") if name.strip()]
    unknown = sorted(set(names) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown backends {unknown}; choose from {', '.join(BACKENDS)}")
    if args.sizes:
        sizes = sorted({int(size.replace("_", "")) for size in args.sizes.split(",")})
    else:
        sizes = list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    output = args.output or (None if args.quick else "docs/benchmarks.md")
    command = shlex.join([".venv/bin/python", "bench/performance.py", *sys.argv[1:]])
    started = now_utc()
    source_revision()  # the code this process imports now, whatever changes during the run
    load_before = os.getloadavg()
    results: list[BackendResult] = []
    profiles: list[Profile] = []
    with tempfile.TemporaryDirectory(prefix="sqlcache-bench-") as work:
        for name in names:
            result, found = run_backend(name, plan, sizes, Path(work))
            results.append(result)
            profiles += found
    plot: str | None = None
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        png = Path(output).with_suffix(".png")
        if write_plot(results, png):
            plot = str(png)
    load = (load_before, os.getloadavg())
    analysis = kept_analysis(Path(output)) if output else ANALYSIS_PLACEHOLDER
    text_report = report(results, profiles, sizes, plan, command, started, load, plot, analysis)
    if output:
        Path(output).write_text(text_report, encoding="utf-8")
        print("## Targets\n\n" + targets_table(results, sizes))
        log(f"wrote {output}" + (f" and {plot}" if plot else ""))
    else:
        print(text_report)


ANALYSIS_START, ANALYSIS_END = "<!-- analysis -->", "<!-- /analysis -->"
ANALYSIS_PLACEHOLDER = (
    f"{ANALYSIS_START}\n_A reading of the numbers, written by hand, goes here; rerunning the"
    f" benchmark keeps this block._\n{ANALYSIS_END}"
)


def kept_analysis(path: Path) -> str:
    """The hand-written block of an earlier report, which a rerun keeps as it is."""
    if not path.exists():
        return ANALYSIS_PLACEHOLDER
    earlier = path.read_text(encoding="utf-8")
    start, end = earlier.find(ANALYSIS_START), earlier.find(ANALYSIS_END)
    if start < 0 or end < start:
        return ANALYSIS_PLACEHOLDER
    return earlier[start : end + len(ANALYSIS_END)]


if __name__ == "__main__":
    main()
