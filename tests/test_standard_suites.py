"""LangChain's own cache contract (langchain-tests), on every backend and driver."""

from __future__ import annotations

import pytest
from langchain_core.caches import BaseCache
from langchain_tests.integration_tests.cache import AsyncCacheTestSuite, SyncCacheTestSuite

from langchain_sqlcache import SQLCache


class TestSyncCacheSuite(SyncCacheTestSuite):
    """sqlite3, psycopg and PyMySQL."""

    @pytest.fixture
    def cache(self, sync_cache: SQLCache) -> BaseCache:
        return sync_cache


class TestAsyncCacheSuite(AsyncCacheTestSuite):
    """aiosqlite, asyncpg and aiomysql."""

    @pytest.fixture
    async def cache(self, async_cache: SQLCache) -> BaseCache:
        return async_cache
