"""The floor of an update: a one-row upsert through the raw driver, beside SQLCache.update.

Run: .venv/bin/python bench/commit_floor.py [--updates 500]
Backends: SQLite (a temporary file), and Postgres and MariaDB/MySQL at
$SQLCACHE_TEST_POSTGRES_URL / $SQLCACHE_TEST_MYSQL_URL (the local servers by default).
Prints a Markdown table; docs/benchmarks.md quotes it where it explains the update ratios.

Every update ends with a commit, and on a server a commit waits for its log to be flushed;
this measures that with the least a cache could write (a 600-byte row, one index), so that
the update column of docs/benchmarks.md can be read against it. Run it on a quiet machine:
other work's disk flushes land in these numbers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langchain_core.outputs import Generation
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from langchain_sqlcache import SQLCache
from langchain_sqlcache.engines import driver_urls

# Run by path, this script has bench/ on sys.path, not the repository's root that bench.*
# imports need (see bench/__init__.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.lifecycle import backends  # the same three backends as bench/lifecycle.py

VALUE = "x" * 600
PROBE_TABLE = "bench_commit_floor"
UPSERT = {
    "postgresql": f"INSERT INTO {PROBE_TABLE} VALUES (:k, :v)"
    " ON CONFLICT (k) DO UPDATE SET v = excluded.v",
    "mysql": f"INSERT INTO {PROBE_TABLE} VALUES (:k, :v) ON DUPLICATE KEY UPDATE v = VALUES(v)",
    "sqlite": f"INSERT INTO {PROBE_TABLE} VALUES (:k, :v)"
    " ON CONFLICT (k) DO UPDATE SET v = excluded.v",
}


def p50_us(call: Callable[[int], object], repeat: int) -> float:
    samples = []
    for i in range(repeat):
        started = time.perf_counter()
        call(i)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


def raw_upsert_p50(url: str, backend: str, repeat: int) -> float:
    """A one-row upsert in autocommit on the driver's own connection, prepared where it can be."""
    engine = create_engine(driver_urls(make_url(url))[0])
    with engine.connect() as connection:
        connection.execute(text(f"CREATE TABLE {PROBE_TABLE} (k INTEGER PRIMARY KEY, v TEXT)"))
        connection.commit()
    try:
        raw = engine.raw_connection()
        driver: Any = raw.driver_connection
        statement, params = _driver_form(backend)
        if backend == "postgresql":
            driver.autocommit = True

            def run(i: int) -> object:
                return driver.execute(statement, params(i), prepare=True)
        else:
            if backend == "mysql":
                driver.autocommit(True)
            else:
                driver.isolation_level = None
            cursor = driver.cursor()

            def run(i: int) -> object:
                return cursor.execute(statement, params(i))

        result = p50_us(run, repeat)
        raw.close()
        return result
    finally:
        with engine.connect() as connection:
            connection.execute(text(f"DROP TABLE {PROBE_TABLE}"))
            connection.commit()
        engine.dispose()


def _driver_form(backend: str) -> tuple[str, Callable[[int], Any]]:
    """UPSERT in the driver's own parameter style."""
    if backend == "sqlite":
        return UPSERT[backend].replace(":k", "?").replace(":v", "?"), lambda i: (i % 100, VALUE)
    return UPSERT[backend].replace(":k", "%s").replace(":v", "%s"), lambda i: (i % 100, VALUE)


def cache_update_p50(url: str, repeat: int) -> float:
    """SQLCache.update of one ~600-byte Generation over 100 keys, with its defaults."""
    cache = SQLCache(url, namespace=f"bench-commit-{uuid.uuid4().hex[:8]}")
    value = [Generation(text=VALUE)]
    try:
        return p50_us(lambda i: cache.update(f"prompt {i % 100}", "llm", value), repeat)
    finally:
        cache.clear()
        cache.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=500, help="timed writes per subject")
    args = parser.parse_args()
    print("| backend | raw one-row upsert p50 | SQLCache.update p50 | update / floor |")
    print("|---|---|---|---|")
    for backend, url in backends().items():
        floor = raw_upsert_p50(url, backend, args.updates)
        update = cache_update_p50(url, args.updates)
        print(f"| {backend} | {floor:,.0f} µs | {update:,.0f} µs | {update / floor:.2f}x |")


if __name__ == "__main__":
    main()
