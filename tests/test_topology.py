"""Replicas that need no standby: SQLite files stand in for a primary and its replica.

What is tested here is the routing, not replication: the replica is another file, so a lookup
it answers misses, and one the primary answers hits.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from langchain_core.outputs import Generation
from sqlalchemy.engine import make_url

from langchain_sqlcache import SQLCache, migrations, topology
from tests.conftest import SERVER_BACKENDS, Backend, unique_namespace

LLM = "topology-llm"
VALUE = [Generation(text="on the primary")]


async def lookups(cache: SQLCache, family: str, times: int) -> list[object]:
    if family == "sync":
        return [cache.lookup("prompt", LLM) for _ in range(times)]
    return [await cache.alookup("prompt", LLM) for _ in range(times)]


@pytest.mark.parametrize("family", ["sync", "async"])
async def test_a_replica_behind_on_schema_is_left_out_then_checked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, family: str
) -> None:
    monkeypatch.setattr(topology, "REPLICA_RECHECK_SECONDS", 1.0)
    primary, replica = f"sqlite:///{tmp_path / 'primary.db'}", f"sqlite:///{tmp_path / 'r.db'}"
    cache = SQLCache(primary, replicas=[replica], read_your_writes=0)
    try:
        cache.update("prompt", LLM, VALUE)
        # The replica has no tables (its migration not replayed yet): the first lookup fails
        # there and is answered by the primary; the next ones skip the replica.
        assert await lookups(cache, family, 5) == [VALUE] * 5
        assert cache.stats().replica_fallbacks == 1
        migrations.upgrade(replica)
        await asyncio.sleep(1.1)
        # Checked again: the replica's schema is the cache's now, and it answers (a miss:
        # it is another file).
        assert await lookups(cache, family, 3) == [None] * 3
        assert cache.stats().replica_fallbacks == 1
    finally:
        await cache.aclose()
        cache.close()


@pytest.mark.parametrize("backend", SERVER_BACKENDS, indirect=True)
@pytest.mark.parametrize("family", ["sync", "async"])
async def test_a_replica_that_refuses_the_cache_is_left_out(backend: Backend, family: str) -> None:
    """A replica with no such database costs one refused login, not one per lookup."""
    replica = make_url(backend.url).set(database="sqlcache_no_such_database")
    cache = SQLCache(
        backend.url, replicas=[replica], namespace=unique_namespace(), read_your_writes=0
    )
    try:
        cache.update("prompt", LLM, VALUE)
        assert await lookups(cache, family, 5) == [VALUE] * 5
        assert cache.stats().replica_fallbacks == 1
    finally:
        await cache.aclose()
        cache.close()
