"""What record_hits costs a hit, stats() at a million entries, and its index an update.

Run: .venv/bin/python bench/lifecycle.py [--entries 1000000] [--lookups 20000]
Backends: SQLite (a temporary file), and Postgres and MariaDB/MySQL at
$SQLCACHE_TEST_POSTGRES_URL / $SQLCACHE_TEST_MYSQL_URL (the local servers by default).
Prints a Markdown table; docs/lifecycle.md carries its latest output.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy
from langchain_core.outputs import Generation
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from langchain_sqlcache import SQLCache
from langchain_sqlcache.engines import driver_urls

# Run by path, this script has bench/ on sys.path, not the repository's root that bench.*
# imports need (see bench/__init__.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.backends import SERVER_URLS  # the servers bench/performance.py measures

LLM = "[('model', 'bench-model')]"
BULK_NAMESPACE = "bench-stats"

# One INSERT ... SELECT per backend fills the entry table with n rows server-side.
BULK_INSERT = {
    "postgresql": """
        INSERT INTO llm_cache_entry (key_hash, namespace, prompt, llm_string, llm_model,
            created_at, updated_at, generation_count, size_bytes, hit_count)
        SELECT md5('a' || g) || md5('b' || g), :ns, 'prompt ' || g, 'llm', 'model-' || (g % 5),
            now(), now(), 1, 200, g % 3
        FROM generate_series(1, :n) AS g""",
    "mysql": """
        INSERT INTO llm_cache_entry (key_hash, namespace, prompt, llm_string, llm_model,
            created_at, updated_at, generation_count, size_bytes, hit_count)
        SELECT SHA2(CONCAT('k', seq), 256), :ns, CONCAT('prompt ', seq), 'llm',
            CONCAT('model-', seq % 5), UTC_TIMESTAMP(6), UTC_TIMESTAMP(6), 1, 200, seq % 3
        FROM seq_1_to_{n}""",
    "sqlite": """
        WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < :n)
        INSERT INTO llm_cache_entry (key_hash, namespace, prompt, llm_string, llm_model,
            created_at, updated_at, generation_count, size_bytes, hit_count)
        SELECT printf('%064d', x), :ns, 'prompt ' || x, 'llm', 'model-' || (x % 5),
            '2026-01-01 00:00:00.000000', '2026-01-01 00:00:00.000000', 1, 200, x % 3
        FROM g""",
}


def backends() -> dict[str, str]:
    sqlite_file = os.path.join(tempfile.mkdtemp(), "bench.db")
    return {"sqlite": f"sqlite:///{sqlite_file}", **SERVER_URLS}


def timed(call: Callable[[], object], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def hit_latencies(url: str, lookups: int) -> dict[bool, list[float]]:
    """Seconds per hit over 200 hot keys, with record_hits off and on, interleaved."""
    caches = {
        record: SQLCache(url, namespace=f"bench-hits-{record}", record_hits=record)
        for record in (False, True)
    }
    keys = [f"prompt {i}" for i in range(200)]
    for cache in caches.values():
        cache.clear()
        for key in keys:
            cache.update(key, LLM, [Generation(text="a cached answer " * 20)])
        for key in keys:  # warm the pool and the statement cache
            cache.lookup(key, LLM)
    rng = random.Random(7)
    samples: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(lookups):
        key = rng.choice(keys)
        for record, cache in caches.items():
            samples[record].extend(timed(lambda: cache.lookup(key, LLM), 1))  # noqa: B023
    for cache in caches.values():
        cache.clear()
        cache.close()
    return samples


def stats_cost(name: str, url: str, entries: int) -> tuple[float, float]:
    """Seconds to fill `entries` rows, and the median of stats() over them."""
    cache = SQLCache(url, namespace=BULK_NAMESPACE)
    cache.lookup("make sure the schema exists", LLM)
    engine = create_engine(driver_urls(make_url(url))[0])
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM llm_cache_entry WHERE namespace = :ns"),
                           {"ns": BULK_NAMESPACE})  # fmt: skip
    started = time.perf_counter()
    with engine.begin() as connection:
        connection.execute(
            text(BULK_INSERT[name].replace("{n}", str(entries))),
            {"ns": BULK_NAMESPACE, "n": entries},
        )
        if name == "postgresql":
            connection.execute(text("ANALYZE llm_cache_entry"))
    fill = time.perf_counter() - started
    stats = cache.stats()
    assert stats.entries == entries, stats
    median = statistics.median(timed(cache.stats, 5))
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM llm_cache_entry WHERE namespace = :ns"),
                           {"ns": BULK_NAMESPACE})  # fmt: skip
    engine.dispose()
    cache.close()
    return fill, median


STATS_INDEX = "ix_llm_cache_entry_stats"
STATS_COLUMNS = "namespace, llm_model, expires_at, generation_count, size_bytes, hit_count"
SCRATCH = "sqlcache_bench_lifecycle"


def index_write_cost(name: str, url: str, rounds: int = 3, updates: int = 400) -> list[str]:
    """Update p50 without and with the stats index, alternating, in a scratch database.

    The index is dropped and created between rounds, so both sides see the same table, the
    same server state and the same noise.
    """
    scratch, admin = url, None
    if name != "sqlite":
        admin = create_engine(driver_urls(make_url(url))[0], isolation_level="AUTOCOMMIT")
        force = " WITH (FORCE)" if name == "postgresql" else ""
        charset = " CHARACTER SET utf8mb4" if name == "mysql" else ""
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {SCRATCH}{force}"))
            connection.execute(text(f"CREATE DATABASE {SCRATCH}{charset}"))
        scratch = make_url(url).set(database=SCRATCH).render_as_string(hide_password=False)
    cache = SQLCache(scratch, namespace="bench-index", prune_every=None)
    value = [Generation(text="a cached answer " * 20)]
    for i in range(2000):
        cache.update(f"seed {i}", LLM, value)
    engine = create_engine(driver_urls(make_url(scratch))[0])
    drop = f"DROP INDEX {STATS_INDEX}" + (" ON llm_cache_entry" if name == "mysql" else "")
    lines = []
    try:
        for round_ in range(rounds):
            p50 = {}
            for indexed in (False, True):
                with engine.begin() as connection:
                    connection.execute(
                        text(f"CREATE INDEX {STATS_INDEX} ON llm_cache_entry ({STATS_COLUMNS})")
                        if indexed
                        else text(drop)
                    )
                samples = [
                    timed(lambda: cache.update(f"r{round_} {indexed} {i}", LLM, value), 1)[0]  # noqa: B023
                    for i in range(updates)
                ]
                p50[indexed] = statistics.median(samples)
            lines.append(
                f"| {name} | {round_ + 1} | {p50[False] * 1e6:.0f} µs | {p50[True] * 1e6:.0f} µs "
                f"| {p50[True] / p50[False]:.2f}x |"
            )
    finally:
        cache.close()
        engine.dispose()
        if admin is not None:
            with admin.connect() as connection:
                connection.execute(text(f"DROP DATABASE {SCRATCH}{force}"))
            admin.dispose()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=3000)
    args = parser.parse_args()
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}\n")  # fmt: skip
    print("| backend | hit p50, record_hits off | hit p50, on | on/off (p50) | on/off (mean)"
          f" | stats() at {args.entries:,} entries |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, url in backends().items():
        samples = hit_latencies(url, args.lookups)
        off_p50, on_p50 = (statistics.median(samples[record]) for record in (False, True))
        off_mean, on_mean = (statistics.fmean(samples[record]) for record in (False, True))
        _, stats_median = stats_cost(name, url, args.entries)
        print(f"| {name} | {off_p50 * 1e3:.3f} ms | {on_p50 * 1e3:.3f} ms | "
              f"{on_p50 / off_p50:.2f}x | {on_mean / off_mean:.2f}x | "
              f"{stats_median * 1e3:.0f} ms |", flush=True)  # fmt: skip
    print("\nWhat the stats index costs an update (p50 of 400 new keys; the index dropped and"
          " created between rounds):\n")  # fmt: skip
    print("| backend | round | without the index | with it | with/without |")
    print("|---|---|---|---|---|")
    for name, url in backends().items():
        for line in index_write_cost(name, url):
            print(line, flush=True)


if __name__ == "__main__":
    main()
