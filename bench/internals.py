r"""The one place the benchmarks reach into SQLCache's internals.

Some measurements need more than the public API gives: the key an entry is stored under (the
raw-driver floor looks rows up by key_hash), the engines a cache built (the pool it sizes,
SQLite's statement trace, a connection held outside the pool), and the wrappers a lookup runs
its statement through (each timed on its own in "where a hit's time goes"). The rest of bench/
gets them from the functions here and names no private of SQLCache itself: `grep -n "cache\._"
bench/*.py` finds this module only.

SQLCache is being split into a store layer; when that lands, these functions switch to the
store's public interface and nothing else in bench/ has to change. Keep them few and thin:
each hands back what the private gives, unchanged. The callables come back as the bound
methods themselves, not wrapped, so that a timed call through one costs what calling the
private did, without a frame of ours in the measurement.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from langchain_sqlcache import SQLCache
from langchain_sqlcache.engines import EnginePair


def key_hasher(cache: SQLCache) -> Callable[[str, str], str]:
    """The cache's key of an entry, ``(prompt, llm_string) -> key_hash`` (``_key_hash``)."""
    return cache._key_hash


def sync_engines(cache: SQLCache) -> EnginePair[Engine] | None:
    """The sync engines the cache holds, schema unchecked; None without any (``_engines``)."""
    return cache._engines


def async_engines(cache: SQLCache) -> EnginePair[AsyncEngine] | None:
    """The async engines the cache built first; None without any (``_async_engines``)."""
    return cache._async_engines


def ready_engines(cache: SQLCache) -> EnginePair[Engine]:
    """The sync engines, the schema checked (``_ready_engines()``)."""
    return cache._ready_engines()


async def ready_async_engines(cache: SQLCache) -> EnginePair[AsyncEngine]:
    """The async engines of the running loop, the schema checked (``_ready_async_engines()``)."""
    return await cache._ready_async_engines()


def runner(cache: SQLCache) -> Callable[..., Any]:
    """``run(work, *args)``: work on the sync engines, with retries and the breaker (``_run``)."""
    return cache._run


def async_runner(cache: SQLCache) -> Callable[..., Awaitable[Any]]:
    """``run(work, *args)`` on the async engines, shielded from cancellation (``_arun``)."""
    return cache._arun


def unshielded_async_runner(cache: SQLCache) -> Callable[..., Awaitable[Any]]:
    """The same without the shield: retries, greenlet, checkout (``_arun_unshielded``)."""
    return cache._arun_unshielded
