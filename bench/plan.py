"""The plan of a run: the subjects' names, the constants the scenarios share, and how much.

Plan says how many operations each measurement runs; FULL is a full run, QUICK a --quick one.
"""

from __future__ import annotations

from dataclasses import dataclass

LLM = "[('_type', 'openai-chat'), ('model_name', 'gpt-4o-mini'), ('temperature', 0.0)]"
HOT_NS, TRIPS_NS, GROWTH_NS, PROBE_NS = "bench", "bench-trips", "bench-growth", "bench-probe"
# Entries filled in bulk get ids from here up, clear of the ids the cache's own writes draw.
ID_BASE = 1_000_000_000
FILL_BATCH = 10_000
# SQLAlchemy's default pool: 5 connections plus 10 overflow. The raw async pools get as many.
POOL_CAPACITY = 15
CONCURRENCY = (1, 16, 64)
ROUND_TRIP_GENERATIONS = (1, 4, 16)
PROMPT_SIZES = {"200 B": 200, "20 KB": 20_000, "1 MB": 1_000_000}
DEFAULT_SIZES = (1_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000, 10_000)
FLOOR, SQLCACHE, LC_CACHE, LC_MD5 = (
    "raw driver",
    "SQLCache",
    "SQLAlchemyCache",
    "SQLAlchemyMd5Cache",
)
# SQLCache with a pool that holds POOL_CAPACITY connections instead of 5 + 10 overflow ones.
SQLCACHE_POOLED = "SQLCache, pool_size=15"


@dataclass(frozen=True)
class Plan:
    """How many operations each measurement runs."""

    hot_keys: int
    warmup: int
    hits: int
    updates: int
    async_ops: int
    rounds: int
    growth_hits: int
    probes_20kb: int
    probes_1mb: int
    profile_ops: int


FULL = Plan(
    hot_keys=500,
    warmup=200,
    hits=2000,
    updates=500,
    async_ops=4000,
    rounds=3,
    growth_hits=2000,
    probes_20kb=200,
    probes_1mb=24,
    profile_ops=5000,
)
QUICK = Plan(
    hot_keys=50,
    warmup=20,
    hits=200,
    updates=50,
    async_ops=400,
    rounds=1,
    growth_hits=200,
    probes_20kb=20,
    probes_1mb=4,
    profile_ops=1000,
)
