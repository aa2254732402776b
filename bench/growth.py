"""Growth: hit latency of SQLCache and of the floor as the table fills to a million entries."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Engine, create_engine, insert, text

from bench.backends import Backend
from bench.floors import sync_floor
from bench.plan import FILL_BATCH, GROWTH_NS, ID_BASE, LLM, PROBE_NS, PROMPT_SIZES, Plan
from bench.results import BackendResult, GrowthRow, Stats
from bench.workload import _ns, answer, filler_generations, filler_prompt, log, now_utc, prompt_of
from langchain_sqlcache import SQLCache
from langchain_sqlcache.codec import encode_entry
from langchain_sqlcache.models import entry_table, generation_table


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
    hash_key = cache.settings.key_hash
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
